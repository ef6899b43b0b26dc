//! Promotions that wait: for a person's approval, or for their digest to be verified in
//! the source environment. An environment holds at most one; a newer one supersedes it.
//! An approval names (app, environment, digest): approving anything else, an expired one
//! or a superseded one fails with what happened to it, and changes nothing.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::deployment::EnvState;
use super::image::{Digest, PinnedImage, Tag};
use super::names::EnvName;

/// How many decisions an environment remembers, for clear answers about old approvals.
pub const KEEP_DECISIONS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Waiting {
    /// A person must approve.
    Approval,
    /// The digest must first be verified in the source environment.
    Verification,
}

/// A promotion not deployed yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub image: PinnedImage,
    pub tag: Option<Tag>,
    /// The environment the digest must be verified in.
    pub from: EnvName,
    pub waiting_for: Waiting,
    #[serde(with = "time::serde::rfc3339")]
    pub pushed_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// When approval is no longer possible (only when waiting for approval).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub reason: String,
    /// Set by `approve`: who, and when. The deployer starts the promotion on seeing it.
    #[serde(default)]
    pub approved: Option<Approved>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approved {
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Pending {
    pub fn digest(&self) -> &Digest {
        &self.image.digest
    }

    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// What became of a pending promotion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Approved {
        by: String,
    },
    Rejected {
        by: String,
        reason: Option<String>,
    },
    Superseded {
        by: Digest,
    },
    Expired,
    /// Deployed without waiting any more (promoted by hand, or deployed by hand).
    Deployed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub digest: Digest,
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Why an approval or a rejection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("nothing waits for approval in {env}")]
    NothingPending { env: EnvName },
    #[error(
        "{digest} is not the promotion waiting in {env}: {pending} is; approve that digest, or promote by hand"
    )]
    OtherDigest {
        env: EnvName,
        digest: Digest,
        pending: Digest,
    },
    #[error(
        "the approval of {digest} in {env} was superseded by {by}, verified since; approve {by} instead"
    )]
    Superseded {
        env: EnvName,
        digest: Digest,
        by: Digest,
    },
    #[error(
        "the approval of {digest} in {env} expired at {at}; promote it by hand if it should still go"
    )]
    Expired {
        env: EnvName,
        digest: Digest,
        at: String,
    },
    #[error("{digest} in {env} {what}")]
    AlreadyDecided {
        env: EnvName,
        digest: Digest,
        what: String,
    },
    #[error("{digest} waits to be verified in {from} first; it cannot be approved yet")]
    NotVerifiedYet { digest: Digest, from: EnvName },
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Waiting::Approval => "approval",
            Waiting::Verification => "verification",
        })
    }
}

impl EnvState {
    /// Holds a promotion here, superseding any other. Holding the same digest again changes
    /// nothing, except that a digest once waiting for verification now waits for approval.
    /// Returns the promotion it superseded.
    pub fn hold(&mut self, pending: Pending, now: OffsetDateTime) -> Option<Pending> {
        if let Some(p) = &self.pending
            && p.digest() == pending.digest()
        {
            if p.waiting_for == Waiting::Verification && pending.waiting_for != p.waiting_for {
                self.pending = Some(pending);
            }
            return None;
        }
        let by = pending.digest().clone();
        let previous = self.pending.replace(pending)?;
        self.decide(previous.digest().clone(), Outcome::Superseded { by }, now);
        Some(previous)
    }

    /// Checks that `digest` may be approved or rejected now, and returns the pending
    /// promotion. An expired one is recorded as such.
    pub fn pending_for(
        &mut self,
        digest: &Digest,
        now: OffsetDateTime,
    ) -> Result<&mut Pending, ApprovalError> {
        let env = self.environment.clone();
        let Some(pending) = &self.pending else {
            return Err(self
                .explain(digest)
                .unwrap_or(ApprovalError::NothingPending { env }));
        };
        if pending.digest() != digest {
            return Err(self
                .explain(digest)
                .unwrap_or_else(|| ApprovalError::OtherDigest {
                    env,
                    digest: digest.clone(),
                    pending: pending.digest().clone(),
                }));
        }
        if pending.waiting_for == Waiting::Verification {
            return Err(ApprovalError::NotVerifiedYet {
                digest: digest.clone(),
                from: pending.from.clone(),
            });
        }
        if let Some(approved) = &pending.approved {
            return Err(ApprovalError::AlreadyDecided {
                env,
                digest: digest.clone(),
                what: format!(
                    "was already approved by {} at {}",
                    approved.by,
                    rfc3339(approved.at)
                ),
            });
        }
        if pending.is_expired(now) {
            let at = rfc3339(pending.expires_at.unwrap_or(now));
            self.pending = None;
            self.decide(digest.clone(), Outcome::Expired, now);
            return Err(ApprovalError::Expired {
                env,
                digest: digest.clone(),
                at,
            });
        }
        Ok(self.pending.as_mut().expect("checked above"))
    }

    /// What happened to a digest no longer pending, from the decisions remembered.
    fn explain(&self, digest: &Digest) -> Option<ApprovalError> {
        let env = self.environment.clone();
        let decision = self.decisions.iter().find(|d| &d.digest == digest)?;
        Some(match &decision.outcome {
            Outcome::Superseded { by } => ApprovalError::Superseded {
                env,
                digest: digest.clone(),
                by: by.clone(),
            },
            Outcome::Expired => ApprovalError::Expired {
                env,
                digest: digest.clone(),
                at: rfc3339(decision.at),
            },
            Outcome::Approved { by } => ApprovalError::AlreadyDecided {
                env,
                digest: digest.clone(),
                what: format!("was already approved by {by} at {}", rfc3339(decision.at)),
            },
            Outcome::Rejected { by, .. } => ApprovalError::AlreadyDecided {
                env,
                digest: digest.clone(),
                what: format!("was rejected by {by} at {}", rfc3339(decision.at)),
            },
            Outcome::Deployed => ApprovalError::AlreadyDecided {
                env,
                digest: digest.clone(),
                what: format!("was deployed at {}", rfc3339(decision.at)),
            },
        })
    }

    /// Records what became of a pending promotion.
    pub fn decide(&mut self, digest: Digest, outcome: Outcome, at: OffsetDateTime) {
        self.decisions.insert(
            0,
            Decision {
                digest,
                outcome,
                at,
            },
        );
        self.decisions.truncate(KEEP_DECISIONS);
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AppName;
    use time::Duration;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-20 10:00 UTC);

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn pending(c: char, waiting_for: Waiting) -> Pending {
        Pending {
            image: PinnedImage::parse(&format!("localhost:5000/acme/web@{}", digest(c))).unwrap(),
            tag: None,
            from: EnvName::parse("staging").unwrap(),
            waiting_for,
            pushed_at: NOW,
            since: NOW,
            expires_at: (waiting_for == Waiting::Approval).then_some(NOW + Duration::hours(72)),
            reason: "verified in staging".into(),
            approved: None,
        }
    }

    fn state() -> EnvState {
        EnvState::new(
            AppName::parse("web").unwrap(),
            EnvName::parse("production").unwrap(),
        )
    }

    #[test]
    fn an_approval_names_its_digest_and_nothing_else_is_approved() {
        let mut s = state();
        s.hold(pending('a', Waiting::Approval), NOW);
        assert!(s.pending_for(&digest('a'), NOW).is_ok());
        let err = s.pending_for(&digest('b'), NOW).unwrap_err();
        assert!(matches!(err, ApprovalError::OtherDigest { .. }), "{err}");
    }

    #[test]
    fn a_newer_digest_supersedes_and_the_old_approval_says_so() {
        let mut s = state();
        s.hold(pending('a', Waiting::Approval), NOW);
        let superseded = s.hold(pending('b', Waiting::Approval), NOW + Duration::minutes(5));
        assert_eq!(superseded.unwrap().digest(), &digest('a'));
        let err = s.pending_for(&digest('a'), NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the approval of {} in production was superseded by {}, verified since; approve {} instead",
                digest('a'),
                digest('b'),
                digest('b')
            )
        );
        assert_eq!(s.pending.as_ref().unwrap().digest(), &digest('b'));
    }

    #[test]
    fn an_expired_approval_fails_and_is_remembered_as_expired() {
        let mut s = state();
        s.hold(pending('a', Waiting::Approval), NOW);
        let later = NOW + Duration::hours(73);
        let err = s.pending_for(&digest('a'), later).unwrap_err();
        assert!(
            err.to_string().contains("expired at 2026-11-23T10:00:00Z"),
            "{err}"
        );
        assert!(s.pending.is_none());
        let again = s.pending_for(&digest('a'), later).unwrap_err();
        assert!(matches!(again, ApprovalError::Expired { .. }), "{again}");
    }

    #[test]
    fn a_digest_waiting_for_verification_cannot_be_approved() {
        let mut s = state();
        s.hold(pending('a', Waiting::Verification), NOW);
        let err = s.pending_for(&digest('a'), NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} waits to be verified in staging first; it cannot be approved yet",
                digest('a')
            )
        );
    }

    #[test]
    fn decisions_are_bounded() {
        let mut s = state();
        for i in 0..20 {
            s.decide(digest('a'), Outcome::Expired, NOW + Duration::minutes(i));
        }
        assert_eq!(s.decisions.len(), KEEP_DECISIONS);
        assert_eq!(s.decisions[0].at, NOW + Duration::minutes(19));
    }
}
