//! The admin API client the CLI uses (`deploy`, `undeploy`, `status`).

use std::path::Path;

use anyhow::{Context, bail};

use super::status::HostStatus;
use super::{BlobSink, DeployReport, request_from_file};

/// A client for one host's admin listener.
pub struct AdminClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// How the client verifies an `https://` admin address and proves itself (mTLS).
#[derive(Debug, Default, Clone)]
pub struct ClientTls {
    /// A PEM CA to trust besides the system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// One PEM file with a client certificate and its key.
    pub identity: Option<std::path::PathBuf>,
}

impl AdminClient {
    /// `admin` is `http(s)://host:port` or just `host:port`; `token` is the admin
    /// API's bearer token (see [`super::token::client_token`]).
    pub fn new(admin: &str, token: Option<String>, tls: &ClientTls) -> anyhow::Result<Self> {
        let base = if admin.contains("://") {
            admin.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", admin.trim_end_matches('/'))
        };
        let mut http = reqwest::Client::builder();
        if let Some(ca) = &tls.ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read the admin CA {}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not a PEM certificate", ca.display()))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        if let Some(id) = &tls.identity {
            let pem = std::fs::read(id)
                .with_context(|| format!("cannot read the client identity {}", id.display()))?;
            http = http.identity(reqwest::Identity::from_pem(&pem).with_context(|| {
                format!(
                    "{}: expected a PEM certificate and its private key",
                    id.display()
                )
            })?);
        }
        Ok(AdminClient {
            base,
            http: http.build().context("cannot build the admin client")?,
            token,
        })
    }

    /// A request to `path` (under the base URL) carrying the token.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => builder.bearer_auth(t),
            None => builder,
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot reach the wasmhive admin API at {} ({e}); is the host running (`just up`)?",
            self.base
        )
    }

    async fn check(&self, resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let what = if self.token.is_some() {
                "the host refused the admin token"
            } else {
                "no admin token found"
            };
            bail!(
                "{what} ({status}): pass --token or set {}, or point --data-dir at the host's \
                 data dir (its {} file)",
                super::token::TOKEN_ENV,
                super::token::TOKEN_FILE
            );
        }
        let body = resp.bytes().await.unwrap_or_default();
        bail!("{} ({status})", super::api::error_message(&body))
    }

    /// Uploads the manifest's components (only those the host lacks) and deploys it.
    pub async fn deploy(&self, manifest: &Path) -> anyhow::Result<DeployReport> {
        self.deploy_with(manifest, None, false).await
    }

    /// [`AdminClient::deploy`] with a rollout strategy overriding the manifest's, and
    /// `force` to replace a running rollout.
    pub async fn deploy_with(
        &self,
        manifest: &Path,
        strategy: Option<&str>,
        force: bool,
    ) -> anyhow::Result<DeployReport> {
        let request = request_from_file(manifest, self).await?;
        let mut query = Vec::new();
        if let Some(s) = strategy {
            query.push(("strategy", s.to_string()));
        }
        if force {
            query.push(("force", "1".to_string()));
        }
        let resp = self
            .request(reqwest::Method::POST, "/v1/apps")
            .query(&query)
            .json(&request)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(self.check(resp).await?.json().await?)
    }

    /// Stops (`stop = true`) or starts a component; returns whether that changed
    /// anything.
    pub async fn set_stopped(
        &self,
        app: &str,
        component: &str,
        stop: bool,
    ) -> anyhow::Result<bool> {
        let action = if stop { "stop" } else { "start" };
        let resp = self
            .request(
                reqwest::Method::POST,
                &format!("/v1/apps/{app}/components/{component}/{action}"),
            )
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let v: serde_json::Value = self.check(resp).await?.json().await?;
        Ok(v["changed"].as_bool().unwrap_or(false))
    }

    /// One operation on a component's bucket (`/v1/apps/{app}/components/{c}/kv/{bucket}`):
    /// `GET` without a key lists, with one reads; `PUT` writes `body`; `DELETE` deletes.
    pub async fn kv(
        &self,
        method: reqwest::Method,
        (app, component, bucket): (&str, &str, &str),
        key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut path = format!("/v1/apps/{app}/components/{component}/kv/{bucket}");
        if let Some(k) = key {
            path.push_str("?key=");
            path.push_str(&percent_encode(k));
        }
        let mut request = self.request(method, &path);
        if let Some(b) = body {
            request = request.body(b);
        }
        let resp = request.send().await.map_err(|e| self.unreachable(e))?;
        self.check(resp).await
    }

    /// Removes an app.
    pub async fn undeploy(&self, app: &str) -> anyhow::Result<()> {
        let resp = self
            .request(reqwest::Method::DELETE, &format!("/v1/apps/{app}"))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.check(resp).await?;
        Ok(())
    }

    /// The host's status.
    /// Publishes a message through the host's bus (or sends a request and returns
    /// the reply).
    pub async fn publish(
        &self,
        request: &super::PublishRequest,
    ) -> anyhow::Result<Option<super::PublishReply>> {
        let request = self
            .request(reqwest::Method::POST, "/v1/publish")
            .json(request);
        self.json(request, "publish reply").await
    }

    /// Prints the messages on `subject` as they arrive (as JSON lines with `json`),
    /// until `count` messages or `duration` have passed.
    pub async fn subscribe(
        &self,
        subject: &str,
        count: Option<u64>,
        duration: Option<std::time::Duration>,
        json: bool,
    ) -> anyhow::Result<u64> {
        let resp = self
            .request(reqwest::Method::GET, "/v1/subscribe")
            .query(&[("subject", subject)])
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut resp = self.check(resp).await?;
        let deadline = duration.map(|d| tokio::time::Instant::now() + d);
        let mut seen = 0;
        let mut pending = Vec::new();
        loop {
            if count.is_some_and(|n| seen >= n) {
                return Ok(seen);
            }
            let chunk = match deadline {
                Some(d) => match tokio::time::timeout_at(d, resp.chunk()).await {
                    Ok(c) => c,
                    Err(_) => return Ok(seen),
                },
                None => resp.chunk().await,
            }
            .map_err(|e| anyhow::anyhow!("the host went away mid-stream ({e})"))?;
            let Some(chunk) = chunk else {
                eprintln!("the host closed the subscription");
                return Ok(seen);
            };
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if count.is_some_and(|n| seen >= n) {
                    break;
                }
                seen += 1;
                if json {
                    print!("{}", String::from_utf8_lossy(&line));
                } else {
                    let m: super::PublishReply = serde_json::from_slice(&line)
                        .context("invalid message from the admin API")?;
                    println!("{} {}", m.subject, m.data);
                }
            }
        }
    }

    /// Starts a run of a job (`POST …/runs`); with `follow`, the response streams its
    /// output as JSON lines ([`super::api::RunEvent`]), else it is `{"run": ID}`.
    pub async fn start_run(
        &self,
        (app, component): (&str, &str),
        body: &super::jobs::RunBody,
        follow: bool,
    ) -> anyhow::Result<reqwest::Response> {
        let mut path = format!("/v1/apps/{app}/components/{component}/runs");
        if follow {
            path.push_str("?follow=1");
        }
        let resp = self
            .request(reqwest::Method::POST, &path)
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.check(resp).await
    }

    /// `GET /v1/apps/{app}/rollout`.
    pub async fn rollout(&self, app: &str) -> anyhow::Result<super::rollout::RolloutStatus> {
        self.get_json(&format!("/v1/apps/{app}/rollout"), "rollout")
            .await
    }

    /// `POST /v1/apps/{app}/promote` or `/abort`: the answer as JSON.
    pub async fn rollout_action(
        &self,
        app: &str,
        action: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let request = self.request(reqwest::Method::POST, &format!("/v1/apps/{app}/{action}"));
        self.json(request, action).await
    }

    /// `GET /v1/apps/{app}/history`.
    pub async fn history(&self, app: &str) -> anyhow::Result<super::history::History> {
        self.get_json(&format!("/v1/apps/{app}/history"), "history")
            .await
    }

    /// `POST /v1/apps/{app}/rollback`.
    pub async fn rollback(&self, app: &str, to: Option<&str>) -> anyhow::Result<DeployReport> {
        let request = self
            .request(reqwest::Method::POST, &format!("/v1/apps/{app}/rollback"))
            .json(&super::api::RollbackRequest {
                to: to.map(str::to_string),
            });
        self.json(request, "rollback report").await
    }

    /// `GET /v1/jobs[/{app}]`.
    pub async fn jobs(&self, app: Option<&str>) -> anyhow::Result<super::jobs::JobList> {
        let path = match app {
            Some(a) => format!("/v1/jobs/{a}"),
            None => "/v1/jobs".to_string(),
        };
        self.get_json(&path, "jobs").await
    }

    /// `GET /v1/runs/{id}`: a run with its output.
    pub async fn run_record(&self, id: &str) -> anyhow::Result<crate::jobs::RunRecord> {
        self.get_json(&format!("/v1/runs/{id}"), "run").await
    }

    /// The host's status document.
    pub async fn status(&self) -> anyhow::Result<HostStatus> {
        self.get_json("/v1/status", "status").await
    }

    /// `GET /v1/hosts`: the lattice's live hosts.
    pub async fn hosts(&self) -> anyhow::Result<super::status::Hosts> {
        self.get_json("/v1/hosts", "hosts").await
    }

    /// `GET path`, read as the JSON document `what`.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> anyhow::Result<T> {
        self.json(self.request(reqwest::Method::GET, path), what)
            .await
    }

    /// Sends `request` and reads the answer as the JSON document `what`.
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<T> {
        let resp = request.send().await.map_err(|e| self.unreachable(e))?;
        self.check(resp)
            .await?
            .json()
            .await
            .with_context(|| format!("invalid {what} document"))
    }
}

#[async_trait::async_trait]
impl BlobSink for AdminClient {
    async fn has(&self, digest: &str) -> anyhow::Result<bool> {
        let resp = self
            .request(reqwest::Method::HEAD, &format!("/v1/blobs/{digest}"))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(resp.status().is_success())
    }

    async fn put(&self, digest: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        let resp = self
            .request(reqwest::Method::PUT, &format!("/v1/blobs/{digest}"))
            .body(bytes)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.check(resp).await?;
        Ok(())
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a query value.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
