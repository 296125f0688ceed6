//! `wasmhive rollout status APP` and `deploy --wait`: what a rollout is doing.

use clap::Subcommand;

use super::AdminArgs;
use crate::control::client::AdminClient;
use crate::control::rollout::{Phase, RolloutStatus};

/// `wasmhive rollout ...`
#[derive(Subcommand)]
pub(crate) enum RolloutOp {
    /// The app's rollout (running, or the last one that ended): versions, phase,
    /// weight, and each analysed step.
    Status {
        /// The app.
        app: String,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub(crate) async fn run(op: RolloutOp) -> anyhow::Result<()> {
    match op {
        RolloutOp::Status { app, json, admin } => {
            let status = admin.client()?.rollout(&app).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render(&status));
            }
            Ok(())
        }
    }
}

fn render(s: &RolloutStatus) -> String {
    let phase = match s.phase {
        Phase::Running => "running",
        Phase::Promoted => "promoted",
        Phase::Aborted => "aborted",
    };
    let mut out = format!(
        "{} {} rollout {} -> {}: {phase}, {}% of requests to {}",
        s.app, s.strategy, s.from, s.to, s.weight_percent, s.to
    );
    if s.steps > 0 && s.phase == Phase::Running {
        out.push_str(&format!(" (step {} of {})", s.step, s.steps));
    }
    out.push('\n');
    if let Some(r) = &s.reason {
        out.push_str(&format!("  reason: {r}\n"));
    }
    out.push_str(&format!(
        "  preview: send `{}: {}` to reach {}\n",
        s.preview_header, s.to, s.to
    ));
    for (i, step) in s.analysis.iter().enumerate() {
        let p99 = step
            .p99_ms
            .map(|p| format!(", p99 <= {p} ms"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  step {} at {}%: {} requests, {} failed{p99}: {}\n",
            i + 1,
            step.weight_percent,
            step.requests,
            step.failed,
            step.verdict
        ));
    }
    out
}

/// `deploy --wait`: prints each change of the rollout until it ends; an error (exit
/// 1) when it was aborted.
pub(crate) async fn follow(client: &AdminClient, app: &str) -> anyhow::Result<()> {
    let mut shown = String::new();
    loop {
        let status = client.rollout(app).await?;
        let text = render(&status);
        if text != shown {
            print!("{text}");
            shown = text;
        }
        match status.phase {
            Phase::Running => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
            Phase::Promoted => return Ok(()),
            Phase::Aborted => anyhow::bail!(
                "the rollout of {app} was aborted: {}",
                status.reason.unwrap_or_default()
            ),
        }
    }
}
