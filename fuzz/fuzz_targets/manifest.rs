//! App manifests and host configuration files: any text is either a checked value or
//! an error naming a place, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match wasmhive::manifest::Manifest::parse(text, "fuzz.toml") {
        Ok(m) => {
            // A manifest that passes has what the host relies on.
            assert!(wasmhive::manifest::check_name(&m.app.name).is_ok());
            for c in &m.components {
                assert!(!c.source.trim().is_empty());
            }
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.toml"), "{shown}");
        }
    }
    if let Err(e) = wasmhive::config::HostConfig::parse(text, "host.toml") {
        assert!(e.to_string().starts_with("host.toml"));
    }
});
