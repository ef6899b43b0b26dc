//! The deployment lifecycle as a pure transition function.
//!
//! ```text
//! Requested ─▶ RollingOut ─▶ RolledOut ─▶ Verifying ─▶ Verified
//!     │             │             │            │
//!     └─────────────┴─────────────┴─▶ Failed ◀─┘
//!                                   │ ├─▶ (terminal when there is nothing to roll back to)
//!                                   ▼ └─▶ RollbackFailed
//!                              RollingBack ─▶ RolledBack | RollbackFailed
//! ```
//!
//! Repeating a step that already happened is `Unchanged`, not an error: events arrive at
//! least once, and a duplicate must change nothing.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    Requested,
    RollingOut,
    RolledOut,
    Verifying,
    Verified,
    Failed,
    RollingBack,
    RolledBack,
    RollbackFailed,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Requested,
        Phase::RollingOut,
        Phase::RolledOut,
        Phase::Verifying,
        Phase::Verified,
        Phase::Failed,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::RollbackFailed,
    ];

    /// Phases after which the deployment no longer holds its environment.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Verified | Phase::RolledBack | Phase::RollbackFailed
        )
    }
}

/// Why a deployment exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An image pushed to ECR with a tag the environment deploys.
    Push,
    /// Requested by hand from the console or CLI.
    Manual,
    /// The digest verified in another environment.
    Promotion,
    /// Redeploying the last verified digest after a failure.
    Rollback,
}

/// Something that happened to a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// The target accepted the rollout (command sent, service updated).
    RolloutStarted,
    RolloutSucceeded,
    /// The rollout failed, could not start, or timed out.
    RolloutFailed,
    VerificationStarted,
    VerificationPassed,
    VerificationFailed,
    /// A rollback deployment took over this failed one.
    RollbackStarted,
    /// Nothing verified exists to roll back to; the failure stands.
    RollbackUnavailable,
    /// The rollback deployment was verified.
    RollbackSucceeded,
    /// The rollback deployment failed, or could not be started.
    RollbackFailed,
    /// A person stopped the deployment before it ended.
    Aborted,
}

impl Step {
    pub const ALL: [Step; 11] = [
        Step::RolloutStarted,
        Step::RolloutSucceeded,
        Step::RolloutFailed,
        Step::VerificationStarted,
        Step::VerificationPassed,
        Step::VerificationFailed,
        Step::RollbackStarted,
        Step::RollbackUnavailable,
        Step::RollbackSucceeded,
        Step::RollbackFailed,
        Step::Aborted,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Changed(Phase),
    /// The step already happened (a repeated event): nothing to do.
    Unchanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a deployment in phase {phase:?} cannot take step {step:?}")]
pub struct InvalidTransition {
    pub phase: Phase,
    pub step: Step,
}

/// The one place that says which step may follow which phase.
pub fn transition(phase: Phase, step: Step) -> Result<Outcome, InvalidTransition> {
    use Phase as P;
    use Step as S;
    let next = match (phase, step) {
        (P::Requested, S::RolloutStarted) => P::RollingOut,
        (P::Requested | P::RollingOut, S::RolloutFailed) => P::Failed,
        (P::RollingOut, S::RolloutSucceeded) => P::RolledOut,
        (P::RolledOut, S::VerificationStarted) => P::Verifying,
        (P::Verifying, S::VerificationPassed) => P::Verified,
        // A rolled-out deployment whose verification never began (the verifier could not
        // take it before its lease ran out) fails its verification all the same.
        (P::RolledOut | P::Verifying, S::VerificationFailed) => P::Failed,
        (P::Failed, S::RollbackStarted) => P::RollingBack,
        (P::Failed, S::RollbackFailed) => P::RollbackFailed,
        (P::RollingBack, S::RollbackSucceeded) => P::RolledBack,
        (P::RollingBack, S::RollbackFailed) => P::RollbackFailed,
        (P::Requested | P::RollingOut | P::RolledOut | P::Verifying, S::Aborted) => P::Failed,
        _ if already_past(phase, step) => return Ok(Outcome::Unchanged),
        _ => return Err(InvalidTransition { phase, step }),
    };
    Ok(Outcome::Changed(next))
}

/// Whether `step` is one this deployment has already taken on its way to `phase`.
fn already_past(phase: Phase, step: Step) -> bool {
    use Phase as P;
    use Step as S;
    match step {
        S::RolloutStarted => !matches!(phase, P::Requested),
        S::RolloutSucceeded => matches!(phase, P::RolledOut | P::Verifying | P::Verified),
        S::VerificationStarted => matches!(phase, P::Verifying | P::Verified),
        S::VerificationPassed => matches!(phase, P::Verified),
        S::RolloutFailed | S::VerificationFailed => {
            matches!(
                phase,
                P::Failed | P::RollingBack | P::RolledBack | P::RollbackFailed
            )
        }
        S::RollbackStarted => matches!(phase, P::RollingBack | P::RolledBack | P::RollbackFailed),
        S::RollbackUnavailable => matches!(phase, P::Failed),
        S::RollbackSucceeded => matches!(phase, P::RolledBack),
        S::RollbackFailed => matches!(phase, P::RollbackFailed),
        S::Aborted => matches!(phase, P::Failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn apply(phase: Phase, steps: &[Step]) -> Phase {
        steps.iter().fold(phase, |p, &s| match transition(p, s) {
            Ok(Outcome::Changed(next)) => next,
            Ok(Outcome::Unchanged) | Err(_) => p,
        })
    }

    #[test]
    fn happy_path_ends_verified() {
        let end = apply(
            Phase::Requested,
            &[
                Step::RolloutStarted,
                Step::RolloutSucceeded,
                Step::VerificationStarted,
                Step::VerificationPassed,
            ],
        );
        assert_eq!(end, Phase::Verified);
    }

    #[test]
    fn failed_verification_rolls_back() {
        let end = apply(
            Phase::Requested,
            &[
                Step::RolloutStarted,
                Step::RolloutSucceeded,
                Step::VerificationStarted,
                Step::VerificationFailed,
                Step::RollbackStarted,
                Step::RollbackSucceeded,
            ],
        );
        assert_eq!(end, Phase::RolledBack);
    }

    #[test]
    fn a_failed_rollback_is_final() {
        let end = apply(
            Phase::Failed,
            &[Step::RollbackStarted, Step::RollbackFailed],
        );
        assert_eq!(end, Phase::RollbackFailed);
        for step in Step::ALL {
            assert!(
                !matches!(transition(end, step), Ok(Outcome::Changed(_))),
                "{step:?}"
            );
        }
    }

    #[test]
    fn repeated_events_change_nothing() {
        assert_eq!(
            transition(Phase::RolledOut, Step::RolloutSucceeded),
            Ok(Outcome::Unchanged)
        );
        assert_eq!(
            transition(Phase::Verified, Step::VerificationPassed),
            Ok(Outcome::Unchanged)
        );
        assert_eq!(
            transition(Phase::RollingBack, Step::RolloutFailed),
            Ok(Outcome::Unchanged)
        );
    }

    #[test]
    fn out_of_order_steps_are_refused() {
        assert!(transition(Phase::Requested, Step::VerificationPassed).is_err());
        assert!(transition(Phase::Verified, Step::RolloutFailed).is_err());
        assert!(
            transition(Phase::RolledBack, Step::RollbackStarted)
                .is_ok_and(|o| o == Outcome::Unchanged)
        );
        assert!(transition(Phase::Verified, Step::RollbackStarted).is_err());
    }

    fn any_step() -> impl Strategy<Value = Step> {
        proptest::sample::select(Step::ALL.to_vec())
    }

    fn any_phase() -> impl Strategy<Value = Phase> {
        proptest::sample::select(Phase::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn final_phases_never_change(phase in any_phase(), step in any_step()) {
            if phase.is_final() {
                prop_assert!(!matches!(transition(phase, step), Ok(Outcome::Changed(_))));
            }
        }

        #[test]
        fn applying_a_step_twice_is_the_same_as_once(phase in any_phase(), step in any_step()) {
            if let Ok(Outcome::Changed(next)) = transition(phase, step) {
                prop_assert_eq!(transition(next, step), Ok(Outcome::Unchanged));
            }
        }

        #[test]
        fn no_sequence_leaves_a_verified_deployment_or_revives_a_rolled_back_one(
            steps in proptest::collection::vec(any_step(), 0..20)
        ) {
            let mut phase = Phase::Requested;
            let mut seen_final = None;
            for step in steps {
                if let Ok(Outcome::Changed(next)) = transition(phase, step) {
                    prop_assert!(seen_final.is_none(), "{:?} changed after final {:?}", next, seen_final);
                    phase = next;
                    if phase.is_final() { seen_final = Some(phase); }
                }
            }
        }

        #[test]
        fn a_rollback_only_follows_a_failure(phase in any_phase()) {
            if let Ok(Outcome::Changed(next)) = transition(phase, Step::RollbackStarted) {
                prop_assert_eq!(phase, Phase::Failed);
                prop_assert_eq!(next, Phase::RollingBack);
            }
        }
    }
}
