//! `wasmhive kv list|get|set|delete`: read and seed a component's own buckets.

use clap::Subcommand;

use super::AdminArgs;

/// `wasmhive kv ...`
#[derive(Subcommand)]
pub(crate) enum KvOp {
    /// The bucket's keys, one per line.
    List {
        /// App.
        app: String,
        /// Component.
        component: String,
        /// Bucket (as in its manifest's keyvalue.buckets).
        bucket: String,
        /// Print `{"keys": [...], "truncated": bool}`.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A key's value: as text when it is UTF-8, else base64 (`--raw`: the bytes).
    Get {
        /// App.
        app: String,
        /// Component.
        component: String,
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Write the value's bytes to stdout as they are.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Sets a key (VALUE, or `-` for stdin).
    Set {
        /// App.
        app: String,
        /// Component.
        component: String,
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// The value; `-` reads it from stdin.
        value: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Deletes a key.
    Delete {
        /// App.
        app: String,
        /// Component.
        component: String,
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `wasmhive kv list|get|set|delete`.
pub(crate) async fn run(op: KvOp) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    match op {
        KvOp::List {
            app,
            component,
            bucket,
            json,
            admin,
        } => {
            let r = admin
                .client()?
                .kv(
                    reqwest::Method::GET,
                    (&app, &component, &bucket),
                    None,
                    None,
                )
                .await?;
            let list: crate::control::kv::KeyList = r.json().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for k in &list.keys {
                    println!("{k}");
                }
                if list.truncated {
                    eprintln!(
                        "(only the first {} keys)",
                        crate::control::kv::MAX_LISTED_KEYS
                    );
                }
            }
        }
        KvOp::Get {
            app,
            component,
            bucket,
            key,
            raw,
            admin,
        } => {
            let r = admin
                .client()?
                .kv(
                    reqwest::Method::GET,
                    (&app, &component, &bucket),
                    Some(&key),
                    None,
                )
                .await?;
            let bytes = r.bytes().await?;
            if raw {
                std::io::stdout().write_all(&bytes)?;
            } else {
                match std::str::from_utf8(&bytes) {
                    Ok(text) => println!("{text}"),
                    Err(_) => {
                        use base64::Engine as _;
                        println!(
                            "{}",
                            base64::engine::general_purpose::STANDARD.encode(&bytes)
                        );
                        eprintln!("(not UTF-8: printed as base64; --raw writes the bytes)");
                    }
                }
            }
        }
        KvOp::Set {
            app,
            component,
            bucket,
            key,
            value,
            admin,
        } => {
            let bytes = if value == "-" {
                let mut b = Vec::new();
                std::io::stdin().read_to_end(&mut b)?;
                b
            } else {
                value.into_bytes()
            };
            admin
                .client()?
                .kv(
                    reqwest::Method::PUT,
                    (&app, &component, &bucket),
                    Some(&key),
                    Some(bytes),
                )
                .await?;
        }
        KvOp::Delete {
            app,
            component,
            bucket,
            key,
            admin,
        } => {
            admin
                .client()?
                .kv(
                    reqwest::Method::DELETE,
                    (&app, &component, &bucket),
                    Some(&key),
                    None,
                )
                .await?;
        }
    }
    Ok(())
}
