//! Waits kept to the duration asked for: the simulator's latencies, and the ARM client's waits
//! for a `Retry-After` (a rehearsal divides both by its speed). Tokio's timer rounds every
//! sleep up to its next millisecond tick and fires a little after it: on this project's
//! machine a sleep ended 1.1 ms late at the median (1.8 ms at p90). At `--speed 50` that is
//! 55–90 simulated milliseconds added to every request, four of them on a cut-over's path,
//! which the run's lower bound (the durations as drawn) does not contain. One thread keeps the
//! pending deadlines and waits on a condition variable, whose timeout the kernel keeps to tens
//! of microseconds. Not for waits a test runs on tokio's paused clock: this one is real time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Waits `d`, to within the kernel's timer slack.
pub(crate) async fn sleep(d: Duration) {
    if d.is_zero() {
        return;
    }
    let (tx, rx) = oneshot::channel();
    timer().add(Instant::now() + d, tx);
    // The sender lives in the heap until its deadline; the thread never drops it early.
    let _ = rx.await;
}

struct Pending {
    at: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct Timer {
    queue: Mutex<(BinaryHeap<Reverse<Pending>>, u64)>,
    changed: Condvar,
}

/// The process's one timer thread, started by the first wait.
fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::default());
        std::thread::Builder::new()
            .name("timer".into())
            .spawn(move || timer.run())
            .expect("start the timer thread");
        timer
    })
}

impl Timer {
    fn add(&self, at: Instant, wake: oneshot::Sender<()>) {
        let mut q = self.queue.lock().expect("timer lock");
        let seq = q.1;
        q.1 += 1;
        let earliest = q.0.peek().is_none_or(|Reverse(p)| at < p.at);
        q.0.push(Reverse(Pending { at, seq, wake }));
        if earliest {
            self.changed.notify_one();
        }
    }

    fn run(&self) {
        let mut q = self.queue.lock().expect("timer lock");
        loop {
            let now = Instant::now();
            while q.0.peek().is_some_and(|Reverse(p)| p.at <= now) {
                let Reverse(p) = q.0.pop().expect("peeked");
                // The waiting task may be gone (its request dropped): nothing to wake.
                let _ = p.wake.send(());
            }
            q = match q.0.peek() {
                Some(Reverse(p)) => {
                    let wait = p.at - now;
                    self.changed.wait_timeout(q, wait).expect("timer lock").0
                }
                None => self.changed.wait(q).expect("timer lock"),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits end in deadline order, none before its deadline, and (on an idle machine) well
    /// within a millisecond of it; the bound here is loose so a busy CI machine passes.
    #[tokio::test]
    async fn waits_end_at_their_deadlines_in_order() {
        let start = Instant::now();
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, ms) in [30u64, 10, 20, 0].into_iter().enumerate() {
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let d = Duration::from_millis(ms);
                sleep(d).await;
                assert!(start.elapsed() >= d, "woken before its deadline");
                order.lock().unwrap().push(i);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![3, 1, 2, 0]);
        assert!(start.elapsed() < Duration::from_millis(500));
    }
}
