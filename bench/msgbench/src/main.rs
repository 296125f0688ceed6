//! msgbench: message rates on a NATS server, for `just bench messaging`.
//!
//! ```text
//! msgbench raw URL N              publish N messages to bench.raw, count them on a subscriber
//! msgbench through URL N          publish N to bench.in, count what a handler forwards to bench.out
//! msgbench durable URL N          the same, publishing through JetStream (acked) to bench.in
//! ```
//!
//! Prints one line: `messages=N seconds=S rate=R` (rate = N / time from the first
//! publish to the last message received). Payloads are 16 bytes.
//!
//! The publisher keeps at most `WINDOW` messages outstanding (published, not yet
//! received): core NATS drops messages for a consumer that falls too far behind, so
//! an open-loop publisher would measure loss, not throughput. The windowed rate is
//! the rate the path sustains without loss.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Messages in flight at most (published, not yet received).
const WINDOW: usize = 2000;

use futures::StreamExt;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: msgbench raw|through|durable URL N");
        std::process::exit(2);
    }
    let (mode, url, n) = (&args[1], &args[2], args[3].parse::<usize>().expect("N"));
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .client_capacity(1 << 16)
        .connect(url.as_str())
        .await
        .expect("connect");
    let (publish_to, receive_on) = match mode.as_str() {
        "raw" => ("bench.raw", "bench.raw"),
        "through" | "durable" => ("bench.in", "bench.out"),
        other => panic!("unknown mode {other}"),
    };
    // A separate connection receives, as a real consumer would.
    let receiver = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(url.as_str())
        .await
        .expect("connect");
    let mut sub = receiver.subscribe(receive_on).await.expect("subscribe");
    receiver.flush().await.expect("flush");
    let payload: async_nats::Subject = publish_to.into();
    let start = Instant::now();
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    let counter = tokio::spawn(async move {
        let mut got = 0usize;
        let mut last = start.elapsed();
        while got < n {
            match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
                Ok(Some(_)) => {
                    got += 1;
                    seen.store(got, Ordering::Relaxed);
                    last = start.elapsed();
                }
                _ => break,
            }
        }
        (got, last)
    });
    let wait_window = |i: usize| {
        let received = received.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while i.saturating_sub(received.load(Ordering::Relaxed)) >= WINDOW
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    };
    if mode == "durable" {
        let js = async_nats::jetstream::new(client.clone());
        let mut acks = Vec::with_capacity(1024);
        for i in 0..n {
            if i % 256 == 0 {
                wait_window(i).await;
            }
            acks.push(
                js.publish(payload.clone(), format!("{i:016}").into())
                    .await
                    .expect("publish"),
            );
            if acks.len() == 1024 {
                for a in acks.drain(..) {
                    a.await.expect("ack");
                }
            }
        }
        for a in acks {
            a.await.expect("ack");
        }
    } else {
        for i in 0..n {
            if mode != "raw" && i % 256 == 0 {
                client.flush().await.expect("flush");
                wait_window(i).await;
            }
            client
                .publish(payload.clone(), format!("{i:016}").into())
                .await
                .expect("publish");
        }
    }
    client.flush().await.expect("flush");
    let (got, took) = counter.await.expect("counter");
    println!(
        "messages={got} seconds={:.3} rate={:.0}",
        took.as_secs_f64(),
        got as f64 / took.as_secs_f64()
    );
    if got < n {
        eprintln!("only {got} of {n} messages arrived");
        std::process::exit(1);
    }
}
