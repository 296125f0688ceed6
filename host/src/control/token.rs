//! The admin API's bearer token: where the host gets it, where clients find it, and
//! the one comparison that checks it.
//!
//! The host takes its token from, in order: `--admin-token-file FILE` (or
//! `[admin] token_file`), `WASMHIVE_ADMIN_TOKEN`, or `<data_dir>/admin.token`, which
//! it creates on first start with 32 random bytes (hex) and mode 0600. Clients
//! (`wasmhive status`, `deploy`, …) find it in the order `--token`,
//! `WASMHIVE_ADMIN_TOKEN`, `<data dir>/admin.token` (`--data-dir`, default
//! `.wasmhive`), so `just up` and `wasmhive status` from the same directory just work.
//!
//! The host keeps only the token's SHA-256, compares digests in constant time, and
//! never logs or prints the token itself.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

/// The token file's name under the data dir.
pub const TOKEN_FILE: &str = "admin.token";
/// Environment variable that gives the token to the host and to clients.
pub const TOKEN_ENV: &str = "WASMHIVE_ADMIN_TOKEN";
/// Shortest token accepted from an operator (a guessable admin token is no lock).
pub const MIN_TOKEN_LEN: usize = 16;

/// Where the host's token came from (for the start-up banner; never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOrigin {
    /// `--admin-token-file` / `[admin] token_file`.
    File(PathBuf),
    /// `WASMHIVE_ADMIN_TOKEN`.
    Env,
    /// `<data_dir>/admin.token`, written by this start.
    Generated(PathBuf),
    /// `<data_dir>/admin.token`, written by an earlier start.
    DataDir(PathBuf),
}

impl std::fmt::Display for TokenOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenOrigin::File(p) => write!(f, "token from {}", p.display()),
            TokenOrigin::Env => write!(f, "token from ${TOKEN_ENV}"),
            TokenOrigin::Generated(p) => write!(f, "new token in {}", p.display()),
            TokenOrigin::DataDir(p) => write!(f, "token in {}", p.display()),
        }
    }
}

/// The token the admin API accepts, held as its digest.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A token from its text (surrounding whitespace, e.g. a file's newline, ignored).
    pub fn new(secret: &str) -> anyhow::Result<AdminToken> {
        let secret = secret.trim();
        anyhow::ensure!(
            secret.len() >= MIN_TOKEN_LEN,
            "the admin token must be at least {MIN_TOKEN_LEN} characters"
        );
        anyhow::ensure!(
            secret.bytes().all(|b| b.is_ascii_graphic()),
            "the admin token must be printable ASCII without spaces (it travels in an HTTP header)"
        );
        Ok(AdminToken {
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// The host's token: from `file`, else `env` (the value of
    /// `WASMHIVE_ADMIN_TOKEN`), else `<data_dir>/admin.token`, created if missing.
    pub fn load(
        file: Option<&Path>,
        env: Option<&str>,
        data_dir: &Path,
    ) -> anyhow::Result<(AdminToken, TokenOrigin)> {
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the admin token file {}", file.display()))?;
            let token = AdminToken::new(&text)
                .with_context(|| format!("admin token file {}", file.display()))?;
            return Ok((token, TokenOrigin::File(file.to_path_buf())));
        }
        if let Some(secret) = env.filter(|s| !s.is_empty()) {
            let token = AdminToken::new(secret).context(TOKEN_ENV)?;
            return Ok((token, TokenOrigin::Env));
        }
        let path = data_dir.join(TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                warn_if_readable_by_others(&path);
                let token = AdminToken::new(&text).with_context(|| {
                    format!(
                        "{}: not a usable admin token (delete it to get a new one)",
                        path.display()
                    )
                })?;
                Ok((token, TokenOrigin::DataDir(path)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = generate();
                write_private(&path, &secret)?;
                Ok((AdminToken::new(&secret)?, TokenOrigin::Generated(path)))
            }
            Err(e) => Err(anyhow::anyhow!(
                "cannot read the admin token {}: {e}",
                path.display()
            )),
        }
    }

    /// Whether `authorization` (the header's value) is `Bearer <this token>`.
    pub fn verify(&self, authorization: Option<&http::HeaderValue>) -> bool {
        let Some(presented) = authorization.and_then(|v| v.to_str().ok()).and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        }) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Digests of equal length, compared without an early exit: the time taken
        // says nothing about how much of the token was right.
        digest
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// A fresh token: 32 bytes from a cryptographically secure generator (seeded by the
/// OS), hex.
fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    hex::encode(bytes)
}

/// Writes `secret` to a new file only its owner can read.
fn write_private(path: &Path, secret: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create the admin token file {}", path.display()))?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(())
}

/// Says loudly when a token file is readable by anyone but its owner.
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the admin token file is readable by other users; chmod 600 it"
            );
        }
    }
}

/// The token a client sends: `flag` (`--token`, which clap also fills from
/// `WASMHIVE_ADMIN_TOKEN`), else the one in `<data_dir>/admin.token` if readable.
pub fn client_token(flag: Option<String>, data_dir: &Path) -> Option<String> {
    flag.filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().to_string())
        .or_else(|| {
            std::fs::read_to_string(data_dir.join(TOKEN_FILE))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(s: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn verifies_only_the_exact_bearer_token() {
        let t = AdminToken::new("0123456789abcdef-secret\n").unwrap();
        assert!(t.verify(Some(&bearer("Bearer 0123456789abcdef-secret"))));
        assert!(t.verify(Some(&bearer("bearer 0123456789abcdef-secret"))));
        assert!(!t.verify(Some(&bearer("Bearer 0123456789abcdef-secreT"))));
        assert!(!t.verify(Some(&bearer("Bearer 0123456789abcdef-secret2"))));
        assert!(!t.verify(Some(&bearer("Basic 0123456789abcdef-secret"))));
        assert!(!t.verify(Some(&bearer("0123456789abcdef-secret"))));
        assert!(!t.verify(None));
        assert!(format!("{t:?}").find("secret").is_none());
    }

    #[test]
    fn refuses_short_tokens() {
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("has a space in it ok").is_err());
    }

    #[test]
    fn generates_once_private_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let (t1, o1) = AdminToken::load(None, None, dir.path()).unwrap();
        assert!(matches!(o1, TokenOrigin::Generated(_)));
        let path = dir.path().join(TOKEN_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let secret = std::fs::read_to_string(&path).unwrap();
        assert_eq!(secret.trim().len(), 64);
        let (t2, o2) = AdminToken::load(None, None, dir.path()).unwrap();
        assert!(matches!(o2, TokenOrigin::DataDir(_)));
        assert_eq!(t1.digest, t2.digest);
        let header = bearer(&format!("Bearer {}", secret.trim()));
        assert!(t2.verify(Some(&header)));
        assert_eq!(
            client_token(None, dir.path()).as_deref(),
            Some(secret.trim())
        );
        // The environment wins over the data dir, the file over both.
        let (t3, o3) = AdminToken::load(None, Some("env-token-0123456789"), dir.path()).unwrap();
        assert_eq!(o3, TokenOrigin::Env);
        assert!(t3.verify(Some(&bearer("Bearer env-token-0123456789"))));
        let f = dir.path().join("given");
        std::fs::write(&f, "file-token-0123456789\n").unwrap();
        let (t4, _) = AdminToken::load(Some(&f), Some("env-token-0123456789"), dir.path()).unwrap();
        assert!(t4.verify(Some(&bearer("Bearer file-token-0123456789"))));
    }
}
