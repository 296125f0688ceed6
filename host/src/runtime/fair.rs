//! Fair shares of guest CPU: a component whose invocations spin on the CPU slows
//! itself, not its neighbours.
//!
//! Guests run on the host's async runtime and give their thread back at every epoch
//! tick ([`super::engine::EPOCH_TICK`]): the epoch callback of a guest that has been
//! running since the last tick decides how it goes on. Without a share, a hundred
//! CPU-bound invocations of one component would be a hundred tasks taking turns with
//! everyone else's, and another component's request would wait for all of them.
//!
//! Each component version has a [`CpuShare`]: a virtual clock that advances by the
//! wall time its guests ran between ticks, divided by its share in CPUs
//! (`pool.cpus_per_component`, the machine's cores less one by default). When the clock runs
//! more than one tick ahead of real time, the component has used more than its share,
//! and the guest that noticed sleeps until the clock is back in range, off the
//! runtime's run queue. So a component runs at most as much guest code as its share
//! of CPUs can, however many of its invocations are admitted; the rest wait their
//! turn (a virtual-clock scheme, like GCRA or CFS's virtual runtime).
//!
//! What it costs: nothing for invocations shorter than a tick (they never reach the
//! callback); one atomic update and a yield per tick for longer ones. Time a guest
//! spends waiting on I/O is not counted: only slices that end at a tick are.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::engine::EPOCH_TICK;
use super::invoke::{from_nanos, to_nanos};

/// The longest slice charged at once: a guest resumed from a pool (or descheduled by
/// the OS) is not charged for the time it was not running.
const MAX_SLICE: Duration = Duration::from_millis(4 * EPOCH_TICK.as_millis() as u64);

/// One component version's share of guest CPU.
#[derive(Debug)]
pub(crate) struct CpuShare {
    /// How many CPUs' worth of guest time the component may use (at least 1).
    cpus: u32,
    /// The component's virtual clock, in [`to_nanos`] units.
    clock: AtomicU64,
}

impl CpuShare {
    /// A share of `cpus` CPUs (at least 1).
    pub(crate) fn new(cpus: u32) -> Arc<Self> {
        Arc::new(CpuShare {
            cpus: cpus.max(1),
            clock: AtomicU64::new(0),
        })
    }

    /// Waits, before an invocation of the component starts, while the component is
    /// over its share (its clock more than a tick ahead): a new invocation's first
    /// slice would otherwise run before anything charged it. Free when within share.
    pub(crate) async fn wait_turn(&self) {
        let ahead = self.clock.load(Ordering::Relaxed);
        let allowed = to_nanos(Instant::now()).saturating_add(EPOCH_TICK.as_nanos() as u64);
        if ahead > allowed {
            tokio::time::sleep_until(from_nanos(ahead - EPOCH_TICK.as_nanos() as u64).into()).await;
        }
    }

    /// Charges a slice of `ran` guest time at `now` and says until when the guest
    /// must wait before its next slice (`None`: go on after a plain yield).
    fn charge(&self, now: Instant, ran: Duration) -> Option<Instant> {
        let now_n = to_nanos(now);
        let cost = (ran.min(MAX_SLICE).as_nanos() as u64) / u64::from(self.cpus);
        let mut old = self.clock.load(Ordering::Relaxed);
        let clock = loop {
            let new = old.max(now_n).saturating_add(cost);
            match self
                .clock
                .compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break new,
                Err(seen) => old = seen,
            }
        };
        let allowed = now_n.saturating_add(EPOCH_TICK.as_nanos() as u64);
        (clock > allowed).then(|| from_nanos(clock - EPOCH_TICK.as_nanos() as u64))
    }
}

/// One store's place in its component's share: when its current slice began.
pub(crate) struct CpuTurn {
    share: Arc<CpuShare>,
    /// When the guest last entered wasm, while it is in wasm.
    in_wasm_since: Option<Instant>,
    /// Time spent in wasm since the last charge, outside the current stretch.
    ran: Duration,
}

impl CpuTurn {
    pub(crate) fn new(share: Arc<CpuShare>) -> Self {
        CpuTurn {
            share,
            in_wasm_since: None,
            ran: Duration::ZERO,
        }
    }

    /// A new invocation starts in this store: nothing before it is charged to it.
    pub(crate) fn begin(&mut self) {
        self.ran = Duration::ZERO;
        self.in_wasm_since = None;
    }

    /// The guest entered wasm (called into, or back from a host call).
    pub(crate) fn entered_wasm(&mut self, now: Instant) {
        self.in_wasm_since = Some(now);
    }

    /// The guest left wasm (a host call, or it returned): that stretch counts.
    pub(crate) fn left_wasm(&mut self, now: Instant) {
        if let Some(since) = self.in_wasm_since.take() {
            self.ran += now.saturating_duration_since(since);
        }
    }

    /// Called at a tick while the guest runs: charges the time spent in wasm since
    /// the last charge (not time waiting on I/O or for a thread between stretches:
    /// the store's call hooks mark where wasm starts and stops) and returns what the
    /// guest awaits before going on (a yield, or a sleep while its component is over
    /// its share).
    pub(crate) fn next_slice(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let now = Instant::now();
        let current = self
            .in_wasm_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        let ran = std::mem::take(&mut self.ran) + current;
        match self.share.charge(now, ran) {
            None => {
                self.in_wasm_since = Some(now);
                Box::pin(tokio::task::yield_now())
            }
            Some(until) => {
                self.in_wasm_since = Some(until);
                Box::pin(tokio::time::sleep_until(until.into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_within_its_share_is_not_held_back() {
        let share = CpuShare::new(2);
        let now = Instant::now() + Duration::from_secs(1);
        // Two guests each running one tick in one tick of real time: exactly 2 CPUs.
        assert_eq!(share.charge(now, EPOCH_TICK), None);
        assert_eq!(share.charge(now, EPOCH_TICK), None);
        assert_eq!(share.charge(now + EPOCH_TICK, EPOCH_TICK), None);
    }

    #[test]
    fn a_component_over_its_share_waits_in_proportion() {
        let share = CpuShare::new(1);
        let now = Instant::now() + Duration::from_secs(1);
        // Ten guests each ran a tick at once on a one-CPU share: the clock is ten ticks
        // ahead, so the later ones wait longer.
        let waits: Vec<Option<Instant>> = (0..10).map(|_| share.charge(now, EPOCH_TICK)).collect();
        assert_eq!(waits[0], None);
        let last = waits[9].expect("the tenth waits");
        let waited = last.duration_since(now);
        assert!(
            waited >= EPOCH_TICK * 8 && waited <= EPOCH_TICK * 10,
            "{waited:?}"
        );
        assert!(waits[5].unwrap() < last);
    }

    #[test]
    fn only_time_in_wasm_is_charged() {
        let share = CpuShare::new(1);
        let mut turn = CpuTurn::new(share.clone());
        let t0 = Instant::now();
        // 0.1 ms in wasm, then 50 ms waiting on a host call, then a tick 0.1 ms in.
        turn.entered_wasm(t0);
        turn.left_wasm(t0 + Duration::from_micros(100));
        turn.entered_wasm(t0 + Duration::from_millis(50));
        assert_eq!(turn.ran, Duration::from_micros(100));
        drop(turn.next_slice());
        // Charged 0.1 ms, not 50: the component's clock is not ahead of real time.
        assert!(share.clock.load(Ordering::Relaxed) <= to_nanos(Instant::now()) + 1_000_000);
        assert_eq!(turn.ran, Duration::ZERO);
    }

    #[test]
    fn a_long_pause_is_not_charged_as_running() {
        let share = CpuShare::new(1);
        let now = Instant::now() + Duration::from_secs(1);
        // A guest resumed from an idle pool after a minute is charged MAX_SLICE at most.
        let wait = share
            .charge(now, Duration::from_secs(60))
            .expect("over share");
        assert!(wait.duration_since(now) <= MAX_SLICE);
    }
}
