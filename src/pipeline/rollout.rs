//! The rollout's decisions (DESIGN §9; issue 12): which site goes in which wave, when the next
//! wave is released, and whether a wave's gate lets the rollout go on. Pure: the one
//! controller (`controller.rs`, ticked by the embedded runner and by the Functions host's
//! `rollout-tick`) reads the waves' standing from the ledger, asks [`decide`], and carries the
//! decision out: it judges a baked wave's gate ([`judge`]: the failure rate, then the
//! [`WaveChecks`] of its migrated targets), records a stop, or releases the next wave; its
//! caller waits out what remains (steps in flight, a bake, an approval, a pause).
//!
//! Shaped after Argo Rollouts (steps, pause, promote, abort, analysis with failure limits),
//! AKS Fleet update runs (approval between stages) and Azure safe deployment (canary, then
//! growing waves): a wave starts only after the previous wave's last terminal outcome plus
//! the bake time and a passed gate (and, with `gates.manualApproval`, `rollout promote`); a
//! tripped gate stops the rollout, later waves untouched, until an operator resumes or aborts
//! it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::azure::ResourceId;
use crate::policy::{Policy, WaveSize};

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

/// A wave's gate, judged after its bake time: the failure rate, then the checks of its
/// migrated targets ([`WaveChecks`]); it passes when every check passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub passed: bool,
    /// What tripped it (the failed checks), or what it found when it passed.
    pub reason: String,
    /// Each check it made, failure rate first.
    pub checks: Vec<GateCheck>,
}

/// The kinds of check a wave's gate makes (DESIGN §9 `gates`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateKind {
    FailureRate,
    KeyVaultReferences,
    Probe,
}

impl GateKind {
    /// Its name for an operator.
    pub fn as_str(self) -> &'static str {
        match self {
            GateKind::FailureRate => "failure rate",
            GateKind::KeyVaultReferences => "Key Vault references",
            GateKind::Probe => "probe",
        }
    }
}

/// One check of a wave's gate and what it found (which target, what failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateCheck {
    pub kind: GateKind,
    pub passed: bool,
    pub detail: String,
}

impl GateCheck {
    /// The failure-rate check: targets rolled back or parked over the wave's targets must not
    /// exceed `max_rate` (Step Functions' tolerated failure percentage, Argo's failure limit).
    pub(crate) fn failure_rate(failed: u32, targets: u32, max_rate: f64) -> GateCheck {
        let rate = f64::from(failed) / f64::from(targets.max(1));
        let passed = rate <= max_rate;
        let pct = |r: f64| format!("{:.0}%", r * 100.0);
        GateCheck {
            kind: GateKind::FailureRate,
            passed,
            detail: format!(
                "{failed} of {targets} target(s) rolled back or parked ({}), {} the gate's {}",
                pct(rate),
                if passed { "within" } else { "above" },
                pct(max_rate)
            ),
        }
    }
}

impl Gate {
    /// The gate of `checks`: its reason names the failed checks, or every check when all pass.
    pub(crate) fn of(checks: Vec<GateCheck>) -> Gate {
        let passed = checks.iter().all(|c| c.passed);
        let reason = checks
            .iter()
            .filter(|c| passed || !c.passed)
            .map(|c| c.detail.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        Gate {
            passed,
            reason,
            checks,
        }
    }

    /// Its checks as one text, as the ledgers store them.
    pub(crate) fn checks_text(&self) -> String {
        serde_json::to_string(&self.checks).expect("gate checks serialise")
    }

    /// A gate as a ledger recorded it, its checks from [`Gate::checks_text`] (none in gates
    /// recorded before checks were).
    pub(crate) fn recorded(passed: bool, reason: String, checks: Option<&str>) -> Gate {
        Gate {
            passed,
            reason,
            checks: checks
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or_default(),
        }
    }
}

/// The checks of a wave's migrated targets beyond its failure rate, made once after its bake
/// (the migration's: Key Vault references still resolved, the HTTP probe). The runtime knows
/// nothing of what they look at; a check that cannot be made fails (an operator decides).
#[async_trait::async_trait]
pub trait WaveChecks: Send + Sync {
    async fn check(&self, migrated: &[ResourceId]) -> Vec<GateCheck>;
}

/// Judges wave `wave`'s gate: its failure rate, then `checks` of its migrated targets.
pub(crate) fn judge(wave: &WaveView, config: &RolloutConfig, checks: Vec<GateCheck>) -> Gate {
    let mut all = vec![GateCheck::failure_rate(
        wave.failed,
        wave.targets,
        config.max_failure_rate,
    )];
    all.extend(checks);
    Gate::of(all)
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
    /// An operator promoted the rollout to this wave (`rollout promote`).
    pub approved: bool,
}

/// The policy's rollout settings, with the bake already in the runner's time (a rehearsal
/// divides it by its speed).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    pub(crate) sizes: Vec<WaveSize>,
    pub(crate) bake: time::Duration,
    pub(crate) max_failure_rate: f64,
    /// Each wave after the first waits for `rollout promote` once its predecessor's gate passed.
    pub(crate) manual_approval: bool,
    /// How often a running rollout looks for `pause` and `abort` from another process.
    pub tick: std::time::Duration,
    /// Targets of one subscription in progress at once, kept by the controller's releases
    /// (`concurrency.perSubscription` in Azure, where no runner admits steps); None on the
    /// embedded runner, which admits each step itself.
    pub(crate) per_subscription: Option<usize>,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            sizes: Vec::new(),
            bake: time::Duration::ZERO,
            max_failure_rate: 1.0,
            manual_approval: false,
            tick: std::time::Duration::from_secs(1),
            per_subscription: None,
        }
    }
}

impl RolloutConfig {
    /// The policy's waves, bake (`time_scale` times shorter in a rehearsal), gate and
    /// approval, looked at every `tick`.
    pub(crate) fn of(policy: &Policy, time_scale: f64, tick: std::time::Duration) -> Self {
        RolloutConfig {
            sizes: policy.waves.clone(),
            bake: time::Duration::seconds_f64(f64::from(policy.bake_minutes) * 60.0 / time_scale),
            max_failure_rate: policy.gates.max_failure_rate,
            manual_approval: policy.gates.manual_approval,
            tick,
            per_subscription: None,
        }
    }

    /// The rollout as the Functions host drives it: the controller keeps the policy's
    /// `concurrency.perSubscription` by starting targets as others finish.
    pub(crate) fn in_azure(mut self, policy: &Policy) -> Self {
        self.per_subscription = Some(policy.concurrency.per_subscription as usize);
        self
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
    /// The bake of wave `index` is over and its gate not judged yet: judge it ([`judge`],
    /// with the [`WaveChecks`] of its migrated targets) and record it.
    Judge {
        index: u32,
    },
    /// Wave `index - 1`'s gate passed: wave `index` waits for `rollout promote`.
    AwaitApproval {
        index: u32,
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
    // A recorded gate was judged after the bake: whoever reads it now (another process, with
    // its own clock and speed) goes by the gate.
    let Some(gate) = last.gate.clone() else {
        let until = ended + config.bake;
        if now < until {
            return Decision::Bake { until };
        }
        return Decision::Judge { index: last.index };
    };
    if !gate.passed && !last.resumed {
        return Decision::Stop {
            index: last.index,
            gate,
        };
    }
    // Resuming past a tripped gate is already an operator's decision to go on.
    if config.manual_approval && !next.approved && !last.resumed {
        return Decision::AwaitApproval { index: next.index };
    }
    Decision::Release {
        index: next.index,
        gate,
    }
}

impl std::fmt::Display for Decision {
    /// What the rollout does or waits for, for an operator.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |t: &OffsetDateTime| {
            t.replace_nanosecond(0)
                .unwrap_or(*t)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        match self {
            Decision::InFlight => f.write_str("steps of the released waves are in flight"),
            Decision::Bake { until } => write!(f, "baking until {}", at(until)),
            Decision::Judge { index } => write!(f, "judging the gate of wave {index}"),
            Decision::AwaitApproval { index } => write!(
                f,
                "waiting for approval: `rollout promote` releases wave {index}"
            ),
            Decision::Release { index, .. } => write!(f, "releasing wave {index}"),
            Decision::Stop { index, gate } => write!(
                f,
                "held by the gate of wave {index}: {}; `rollout resume` goes on, `rollout abort` cancels the rest",
                gate.reason
            ),
            Decision::Paused => f.write_str("paused: `rollout resume` continues it"),
            Decision::Done => f.write_str("nothing left to release"),
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
            approved: false,
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
        // After the bake the gate is judged (once), then the next wave released.
        assert_eq!(
            decide(&waves, Control::Running, &c, t(160)),
            Decision::Judge { index: 0 }
        );
        waves[0].gate = Some(judge(&waves[0], &c, Vec::new()));
        let Decision::Release { index: 1, gate } = decide(&waves, Control::Running, &c, t(160))
        else {
            panic!("wave 1 is released after the bake");
        };
        // A judged gate ended the bake, whatever the clock of whoever reads it.
        assert!(matches!(
            decide(&waves, Control::Running, &c, t(120)),
            Decision::Release { index: 1, .. }
        ));
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
        assert_eq!(
            decide(&waves, Control::Running, &c, t(50)),
            Decision::Judge { index: 1 }
        );
        waves[1].gate = Some(judge(&waves[1], &c, Vec::new()));
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
        assert!(GateCheck::failure_rate(1, 10, 0.1).passed);
        assert!(!GateCheck::failure_rate(1, 10, 0.0).passed);
        assert!(GateCheck::failure_rate(0, 10, 0.0).passed);
    }

    #[test]
    fn a_failed_check_trips_the_gate_and_names_itself() {
        let c = config(0, 0.5);
        let w = wave(0, Some(0), Some(10), 0);
        let kv = GateCheck {
            kind: GateKind::KeyVaultReferences,
            passed: false,
            detail: "a01: Key Vault references no longer resolve: DbPassword".into(),
        };
        let probe = GateCheck {
            kind: GateKind::Probe,
            passed: true,
            detail: "10 target(s) answered the probe".into(),
        };
        let gate = judge(&w, &c, vec![kv.clone(), probe.clone()]);
        assert!(!gate.passed);
        assert_eq!(
            gate.reason, kv.detail,
            "only the failed check is the reason"
        );
        assert_eq!(
            gate.checks.iter().map(|c| c.kind).collect::<Vec<_>>(),
            vec![
                GateKind::FailureRate,
                GateKind::KeyVaultReferences,
                GateKind::Probe
            ]
        );
        let passed = judge(&w, &c, vec![probe]);
        assert!(passed.passed);
        assert_eq!(
            passed.reason,
            "0 of 10 target(s) rolled back or parked (0%), within the gate's 50%; 10 target(s) answered the probe"
        );
    }

    #[test]
    fn manual_approval_waits_for_promote_after_a_passed_gate() {
        let c = RolloutConfig {
            manual_approval: true,
            ..config(60, 0.1)
        };
        let mut waves = vec![wave(0, Some(0), Some(100), 0), wave(1, None, None, 0)];
        // The bake and the gate come first; approval is asked only of a passed gate.
        assert_eq!(
            decide(&waves, Control::Running, &c, t(120)),
            Decision::Bake { until: t(160) }
        );
        waves[0].gate = Some(judge(&waves[0], &c, Vec::new()));
        let waiting = decide(&waves, Control::Running, &c, t(100_000));
        assert_eq!(waiting, Decision::AwaitApproval { index: 1 });
        assert_eq!(
            waiting.to_string(),
            "waiting for approval: `rollout promote` releases wave 1"
        );
        assert_eq!(
            decide(&waves, Control::Paused, &c, t(100_000)),
            Decision::Paused
        );
        waves[1].approved = true;
        assert!(matches!(
            decide(&waves, Control::Running, &c, t(100_000)),
            Decision::Release { index: 1, .. }
        ));
        // A tripped gate stops; resuming it is the operator's approval.
        waves[1].approved = false;
        waves[0].failed = 5;
        waves[0].gate = Some(judge(&waves[0], &c, Vec::new()));
        assert!(matches!(
            decide(&waves, Control::Running, &c, t(100_000)),
            Decision::Stop { index: 0, .. }
        ));
        waves[0].resumed = true;
        assert!(matches!(
            decide(&waves, Control::Running, &c, t(100_000)),
            Decision::Release { index: 1, .. }
        ));
    }

    #[test]
    fn control_keeps_its_text() {
        for c in [Control::Running, Control::Paused, Control::Aborted] {
            assert_eq!(Control::parse(c.as_str()), Some(c));
        }
        assert_eq!(Control::parse("stopped"), None);
    }
}
