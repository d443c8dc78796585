//! The rollout controller (DESIGN §9; issue 12): which site goes in which wave, when the next
//! wave is released, and whether a wave's gate lets the rollout go on. Pure: the driver
//! (`local.rs` for the embedded runner) reads the waves' standing from the ledger, asks
//! [`decide`], and carries the decision out (waits on a timer, records a gate, releases a
//! wave's first messages in the transaction that records the release).
//!
//! Shaped after Argo Rollouts (steps, pause, abort, analysis with failure limits) and Azure
//! safe deployment (canary, then growing waves): a wave starts only after the previous wave's
//! last terminal outcome plus the bake time, and a tripped gate stops the rollout, later
//! waves untouched, until an operator resumes or aborts it.

use serde::Serialize;
use time::OffsetDateTime;

use crate::azure::ResourceId;
use crate::policy::WaveSize;

/// The tag that orders sites inside a subscription when waves are formed.
pub(crate) const RING_TAG: &str = "vnet-migrate/ring";

/// A site in scope, as the waves order it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub(crate) id: ResourceId,
    /// The value of its [`RING_TAG`] tag, if it has one.
    pub(crate) ring: Option<String>,
}

impl Candidate {
    /// A site known only by id (given with `--app`): no ring.
    pub(crate) fn bare(id: ResourceId) -> Self {
        Candidate { id, ring: None }
    }
}

/// Splits the sites into waves: sorted by subscription, then ring (sites without a ring after
/// those with one, rings compared as text), then id, so the same fleet always gives the same
/// waves; each size takes that many sites (a percentage of all sites, rounded up so a wave is
/// never empty while sites remain); the sites left after the last size form one more wave.
/// No sizes means one wave of everything. Empty waves are dropped.
pub(crate) fn assign(mut sites: Vec<Candidate>, sizes: &[WaveSize]) -> Vec<Vec<ResourceId>> {
    sites.sort_by(|a, b| {
        (
            a.id.subscription().to_ascii_lowercase(),
            a.ring.is_none(),
            &a.ring,
            a.id.key(),
        )
            .cmp(&(
                b.id.subscription().to_ascii_lowercase(),
                b.ring.is_none(),
                &b.ring,
                b.id.key(),
            ))
    });
    let total = sites.len();
    let mut rest = sites.into_iter().map(|c| c.id);
    let mut waves: Vec<Vec<ResourceId>> = sizes
        .iter()
        .map(|s| {
            let n = match *s {
                WaveSize::Count(n) => n as usize,
                WaveSize::Percent(p) => (total * p as usize).div_ceil(100),
            };
            rest.by_ref().take(n).collect()
        })
        .collect();
    waves.push(rest.collect());
    waves.retain(|w| !w.is_empty());
    waves
}

/// What an operator asked of the rollout (`rollout pause|resume|abort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Control {
    #[default]
    Running,
    /// No wave is released and no new step is taken until `resume`.
    Paused,
    /// Untouched targets are cancelled; started ones finish.
    Aborted,
}

impl Control {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Control::Running => "running",
            Control::Paused => "paused",
            Control::Aborted => "aborted",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        [Control::Running, Control::Paused, Control::Aborted]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// A wave's gate, judged after its bake time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gate {
    pub passed: bool,
    pub reason: String,
}

impl Gate {
    /// The failure-rate gate: targets rolled back or parked over the wave's targets must not
    /// exceed `max_rate` (Step Functions' tolerated failure percentage, Argo's failure limit).
    pub(crate) fn failure_rate(failed: u32, targets: u32, max_rate: f64) -> Gate {
        let rate = f64::from(failed) / f64::from(targets.max(1));
        let passed = rate <= max_rate;
        let pct = |r: f64| format!("{:.0}%", r * 100.0);
        Gate {
            passed,
            reason: format!(
                "{failed} of {targets} target(s) rolled back or parked ({}), {} the gate's {}",
                pct(rate),
                if passed { "within" } else { "above" },
                pct(max_rate)
            ),
        }
    }
}

/// One wave as the ledger has it now.
#[derive(Debug, Clone, PartialEq)]
pub struct WaveView {
    pub index: u32,
    /// Targets in the wave (its sites and the slots found under them).
    pub targets: u32,
    /// Targets rolled back or parked.
    pub failed: u32,
    pub released_at: Option<OffsetDateTime>,
    /// The wave's last terminal outcome, once every target has one.
    pub ended_at: Option<OffsetDateTime>,
    pub gate: Option<Gate>,
    /// An operator resumed the rollout past this wave's tripped gate.
    pub resumed: bool,
}

/// The policy's rollout settings, with the bake already in the runner's time (a rehearsal
/// divides it by its speed).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    pub(crate) sizes: Vec<WaveSize>,
    pub(crate) bake: time::Duration,
    pub(crate) max_failure_rate: f64,
    /// How often a running rollout looks for `pause` and `abort` from another process.
    pub tick: std::time::Duration,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            sizes: Vec::new(),
            bake: time::Duration::ZERO,
            max_failure_rate: 1.0,
            tick: std::time::Duration::from_secs(1),
        }
    }
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A released wave still has targets without an outcome.
    InFlight,
    /// The last released wave is baking until then.
    Bake {
        until: OffsetDateTime,
    },
    /// Record `gate` for wave `index - 1` (unless recorded) and release wave `index`.
    Release {
        index: u32,
        gate: Gate,
    },
    /// Wave `index`'s gate tripped: record it (unless recorded) and stop; later waves untouched.
    Stop {
        index: u32,
        gate: Gate,
    },
    Paused,
    /// Every wave is released and finished, or the rollout was aborted and nothing is left.
    Done,
}

/// The next thing to do, from the waves' standing (in index order), the operator's control
/// and the time now.
pub(crate) fn decide(
    waves: &[WaveView],
    control: Control,
    config: &RolloutConfig,
    now: OffsetDateTime,
) -> Decision {
    let Some(last) = waves.iter().rev().find(|w| w.released_at.is_some()) else {
        // Runs begin with their first wave released (`begin_run`); a run without waves
        // (written before rollouts) has nothing to release.
        return Decision::Done;
    };
    let Some(ended) = last.ended_at else {
        return Decision::InFlight;
    };
    let Some(next) = waves.iter().find(|w| w.index == last.index + 1) else {
        return Decision::Done;
    };
    match control {
        Control::Aborted => return Decision::Done,
        Control::Paused => return Decision::Paused,
        Control::Running => {}
    }
    let until = ended + config.bake;
    if now < until {
        return Decision::Bake { until };
    }
    let gate = last
        .gate
        .clone()
        .unwrap_or_else(|| Gate::failure_rate(last.failed, last.targets, config.max_failure_rate));
    if gate.passed || last.resumed {
        Decision::Release {
            index: next.index,
            gate,
        }
    } else {
        Decision::Stop {
            index: last.index,
            gate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(sub: &str, name: &str, ring: Option<&str>) -> Candidate {
        Candidate {
            id: ResourceId::parse(&format!(
                "/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Web/sites/{name}"
            ))
            .unwrap(),
            ring: ring.map(str::to_string),
        }
    }

    fn names(waves: &[Vec<ResourceId>]) -> Vec<Vec<String>> {
        waves
            .iter()
            .map(|w| w.iter().map(|i| i.name().to_string()).collect())
            .collect()
    }

    #[test]
    fn waves_take_sizes_and_percentages_in_a_stable_order() {
        let sites = vec![
            site("s2", "a", None),
            site("s1", "z", Some("0")),
            site("s1", "b", None),
            site("s1", "c", Some("1")),
            site("s1", "a", None),
            site("s2", "b", Some("0")),
        ];
        let sizes = [WaveSize::Count(1), WaveSize::Percent(34)];
        let waves = assign(sites.clone(), &sizes);
        // s1 first: ring 0, ring 1, then unringed by id; then s2 the same way. 34% of 6 is
        // 2.04, rounded up to 3; the rest form one more wave.
        assert_eq!(
            names(&waves),
            vec![vec!["z"], vec!["c", "a", "b"], vec!["b", "a"]]
        );
        let mut reversed = sites.clone();
        reversed.reverse();
        assert_eq!(
            assign(reversed, &sizes),
            waves,
            "the input order does not matter"
        );
        assert_eq!(names(&assign(sites.clone(), &[])).len(), 1);
        // Sizes beyond the fleet leave no empty waves.
        let big = assign(
            sites,
            &[
                WaveSize::Count(5),
                WaveSize::Count(5),
                WaveSize::Percent(10),
            ],
        );
        assert_eq!(big.iter().map(Vec::len).collect::<Vec<_>>(), vec![5, 1]);
    }

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s)
    }

    fn wave(index: u32, released: Option<i64>, ended: Option<i64>, failed: u32) -> WaveView {
        WaveView {
            index,
            targets: 10,
            failed,
            released_at: released.map(t),
            ended_at: ended.map(t),
            gate: None,
            resumed: false,
        }
    }

    fn config(bake: i64, max: f64) -> RolloutConfig {
        RolloutConfig {
            bake: time::Duration::seconds(bake),
            max_failure_rate: max,
            ..RolloutConfig::default()
        }
    }

    #[test]
    fn the_next_wave_waits_for_the_bake() {
        let c = config(60, 0.1);
        let mut waves = vec![wave(0, Some(0), None, 0), wave(1, None, None, 0)];
        assert_eq!(
            decide(&waves, Control::Running, &c, t(500)),
            Decision::InFlight
        );
        waves[0] = wave(0, Some(0), Some(100), 1);
        assert_eq!(
            decide(&waves, Control::Running, &c, t(120)),
            Decision::Bake { until: t(160) }
        );
        let Decision::Release { index: 1, gate } = decide(&waves, Control::Running, &c, t(160))
        else {
            panic!("wave 1 is released after the bake");
        };
        assert!(gate.passed, "{gate:?}");
        assert_eq!(
            gate.reason,
            "1 of 10 target(s) rolled back or parked (10%), within the gate's 10%"
        );
        // Pause holds the release; abort releases nothing more.
        assert_eq!(
            decide(&waves, Control::Paused, &c, t(900)),
            Decision::Paused
        );
        assert_eq!(decide(&waves, Control::Aborted, &c, t(900)), Decision::Done);
        // The last wave finished: done, whatever its failures.
        waves[1] = wave(1, Some(160), Some(300), 10);
        assert_eq!(decide(&waves, Control::Running, &c, t(300)), Decision::Done);
        assert_eq!(decide(&[], Control::Running, &c, t(0)), Decision::Done);
    }

    #[test]
    fn a_tripped_gate_stops_until_resumed() {
        let c = config(0, 0.1);
        let mut waves = vec![
            wave(0, Some(0), Some(10), 0),
            wave(1, Some(10), Some(50), 2),
            wave(2, None, None, 0),
            wave(3, None, None, 0),
        ];
        let stop = decide(&waves, Control::Running, &c, t(50));
        let Decision::Stop { index: 1, gate } = stop else {
            panic!("{stop:?}");
        };
        assert!(!gate.passed);
        assert_eq!(
            gate.reason,
            "2 of 10 target(s) rolled back or parked (20%), above the gate's 10%"
        );
        // Recorded, it stays stopped however long it waits.
        waves[1].gate = Some(gate.clone());
        assert_eq!(
            decide(&waves, Control::Running, &c, t(100_000)),
            Decision::Stop {
                index: 1,
                gate: gate.clone()
            }
        );
        waves[1].resumed = true;
        assert_eq!(
            decide(&waves, Control::Running, &c, t(100_000)),
            Decision::Release { index: 2, gate }
        );
        // A rate of exactly the limit passes; 0 tolerates nothing.
        assert!(Gate::failure_rate(1, 10, 0.1).passed);
        assert!(!Gate::failure_rate(1, 10, 0.0).passed);
        assert!(Gate::failure_rate(0, 10, 0.0).passed);
    }

    #[test]
    fn control_keeps_its_text() {
        for c in [Control::Running, Control::Paused, Control::Aborted] {
            assert_eq!(Control::parse(c.as_str()), Some(c));
        }
        assert_eq!(Control::parse("stopped"), None);
    }
}
