//! digest: the shop's daily sales digest, a job (it exports `wasi:cli/run`). It runs
//! two ways (see `manifests/shop.toml`):
//!
//! - **Once per confirmed order** (`on_message = ["orders.confirmed"]`: the host sets
//!   `WASMHIVE_SUBJECT` and passes the order's JSON on stdin): adds the order to its
//!   day's tally, `day/<YYYY-MM-DD>` in bucket `digest` (UTC days). A redelivered
//!   order is counted once (`seen/<order id>`).
//! - **On its schedule** (07:00 UTC) or by hand (`wasmhive run shop digest`):
//!   summarises a day (`--day yesterday`, `today` or `YYYY-MM-DD`; the manifest says
//!   `yesterday`), prints the summary, stores it as `summary/<day>` and publishes it
//!   as JSON on `reports.daily`.
//!
//! Exit codes: 0 done, 2 bad arguments, 1 anything else (the reason on stderr).

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};
use shopkit::kv::{Bucket, Change};
use shopkit::saga::Order;

const BUCKET: &str = "digest";
/// Where the summaries are published.
const SUBJECT: &str = "reports.daily";

/// One day's confirmed orders.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Tally {
    orders: u64,
    revenue_cents: u64,
    /// Units sold per SKU.
    units: BTreeMap<String, u64>,
}

/// What a digest says about a day.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    day: &'a str,
    orders: u64,
    revenue: String,
    revenue_cents: u64,
    /// The best-selling SKUs (most units first), at most five.
    top: Vec<(String, u64)>,
}

fn main() {
    let result = match std::env::var("WASMHIVE_SUBJECT") {
        Ok(subject) => record(&subject),
        Err(_) => digest(std::env::args().skip(1).collect()),
    };
    if let Err((code, message)) = result {
        eprintln!("digest: {message}");
        std::process::exit(code);
    }
}

type Outcome = Result<(), (i32, String)>;

fn fail(e: shopkit::Error) -> (i32, String) {
    (1, e.message)
}

/// Adds the order on stdin to its day's tally.
fn record(subject: &str) -> Outcome {
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .map_err(|e| (1, format!("cannot read stdin: {e}")))?;
    let order: Order = shopkit::from_json(&body).map_err(fail)?;
    let bucket = Bucket::open(BUCKET).map_err(fail)?;
    if !bucket
        .insert_new(&format!("seen/{}", order.id), &true)
        .map_err(fail)?
    {
        println!("{subject}: order {} already counted", order.id);
        return Ok(());
    }
    let day = day_of(now_secs());
    let key = format!("day/{day}");
    bucket
        .update(&key, |tally: Option<Tally>| {
            let mut t = tally.unwrap_or_default();
            t.orders += 1;
            t.revenue_cents += order.total_cents;
            for item in &order.items {
                *t.units.entry(item.sku.clone()).or_default() += u64::from(item.quantity);
            }
            Ok((Change::Put(t), ()))
        })
        .map_err(fail)?;
    println!("{subject}: counted order {} for {day}", order.id);
    Ok(())
}

/// Summarises a day: prints, stores and publishes it.
fn digest(args: Vec<String>) -> Outcome {
    let day = match args.as_slice() {
        [] => day_of(now_secs() - 86_400),
        [flag, value] if flag == "--day" => match value.as_str() {
            "today" => day_of(now_secs()),
            "yesterday" => day_of(now_secs() - 86_400),
            d if is_date(d) => d.to_string(),
            other => {
                return Err((
                    2,
                    format!("--day {other:?}: use today, yesterday or YYYY-MM-DD"),
                ));
            }
        },
        other => {
            return Err((
                2,
                format!("unexpected arguments {other:?}: use [--day DAY]"),
            ));
        }
    };
    let bucket = Bucket::open(BUCKET).map_err(fail)?;
    let tally: Tally = bucket
        .get(&format!("day/{day}"))
        .map_err(fail)?
        .unwrap_or_default();
    let mut top: Vec<(String, u64)> = tally.units.clone().into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(5);
    let summary = Summary {
        day: &day,
        orders: tally.orders,
        revenue: shopkit::money(tally.revenue_cents),
        revenue_cents: tally.revenue_cents,
        top,
    };
    println!("sales digest for {day}");
    println!("  confirmed orders: {}", summary.orders);
    println!("  revenue:          {}", summary.revenue);
    for (sku, units) in &summary.top {
        println!("  {sku:<16} {units} sold");
    }
    bucket
        .set(&format!("summary/{day}"), &summary)
        .map_err(fail)?;
    shopkit::events::publish(SUBJECT, &summary).map_err(fail)?;
    println!("published on {SUBJECT}");
    Ok(())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
fn day_of(secs: i64) -> String {
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_796_693_985), "2026-12-08");
        assert_eq!(day_of(951_782_400), "2000-02-29");
        assert!(is_date("2026-12-08"));
        assert!(!is_date("2026-1-08"));
    }
}
