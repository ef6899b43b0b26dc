//! Promotions that wait: for a person's approval, or for their digest to be verified in
//! the source environment. An environment holds at most one; a newer one supersedes it
//! (`EnvState::hold`). An approval names (app, environment, digest): approving anything
//! else, an expired one or a superseded one fails with what happened to it, and changes
//! nothing.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

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
    /// A `Promotion Approved` event about a promotion nobody approved.
    #[error("{digest} in {env} has not been approved")]
    NotApproved { env: EnvName, digest: Digest },
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Waiting::Approval => "approval",
            Waiting::Verification => "verification",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AppName;
    use crate::domain::environment::EnvState;
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
