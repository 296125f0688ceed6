//! The admin API's JSON bodies: a deploy request (and the manifest inside it) and a
//! publish request (its subject and headers as the buses check them).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(deploy) = serde_json::from_slice::<wasmhive::control::DeployRequest>(data) {
        let _ = wasmhive::manifest::Manifest::parse(&deploy.manifest, &deploy.origin);
        for digest in deploy.sources.values() {
            let _ = wasmhive::control::blobs::parse_digest(digest);
        }
    }
    if let Ok(publish) = serde_json::from_slice::<wasmhive::control::PublishRequest>(data) {
        let message = wasmhive::bus::Message {
            subject: publish.subject.clone(),
            reply_to: None,
            headers: publish.headers,
            body: publish.data.into(),
        };
        let _ = wasmhive::bus::subject::check(&message.subject, false);
        if message.check_headers().is_ok() {
            // What the NATS bus builds from checked headers must not panic.
            let _ = wasmhive::bus::nats::nats_headers(&message.headers);
        }
    }
});
