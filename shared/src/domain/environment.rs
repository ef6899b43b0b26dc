//! The state of one (app, environment) and the pure rules that change it: what a new image
//! does there (start, queue behind the rollout in flight, or be skipped, and why), the
//! lease, the queue, the verified and quarantined digests, and the promotion waiting.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::approval::{ApprovalError, Decision, KEEP_DECISIONS, Outcome, Pending, Waiting};
use super::deployment::{Deployment, DeploymentId, Request};
use super::image::{Digest, PinnedImage, Tag};
use super::lifecycle::Kind;
use super::names::{AppName, EnvName};
use super::policy::version_of;
use super::scan::{AwaitingScan, KEEP_SCANS, ScanResult};

/// How many verified digests an environment remembers as rollback candidates.
pub const KEEP_VERIFIED: usize = 10;

/// How many failed digests an environment keeps quarantined: the most recent ones. The
/// environment's record stays far under DynamoDB's 400 KB item limit however many
/// rollouts fail.
pub const KEEP_QUARANTINED: usize = 100;

/// How many revoked digests an environment remembers: the most recent ones.
pub const KEEP_REVOKED: usize = 100;

/// How much of a failure's reason its quarantine repeats.
const QUARANTINE_REASON: usize = 500;

/// The image an environment runs, or is rolling out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Current {
    pub deployment_id: DeploymentId,
    pub digest: Digest,
    pub tag: Option<Tag>,
    #[serde(with = "time::serde::rfc3339")]
    pub pushed_at: OffsetDateTime,
}

/// Held by the one deployment that may change the environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub deployment_id: DeploymentId,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// The newest image waiting for the environment to be free.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    pub image: PinnedImage,
    pub tag: Option<Tag>,
    pub kind: Kind,
    #[serde(with = "time::serde::rfc3339")]
    pub pushed_at: OffsetDateTime,
    pub requested_by: Option<String>,
    pub reason: Option<String>,
}

impl From<&Request> for Queued {
    fn from(request: &Request) -> Self {
        Queued {
            image: request.image.clone(),
            tag: request.tag.clone(),
            kind: request.kind,
            pushed_at: request.pushed_at,
            requested_by: request.requested_by.clone(),
            reason: request.reason.clone(),
        }
    }
}

impl Queued {
    pub fn into_request(self) -> Request {
        Request {
            image: self.image,
            tag: self.tag,
            kind: self.kind,
            pushed_at: self.pushed_at,
            requested_by: self.requested_by,
            reason: self.reason,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Freeze {
    pub reason: String,
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifiedDigest {
    pub digest: Digest,
    pub tag: Option<Tag>,
    pub deployment_id: DeploymentId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantine {
    pub reason: String,
    pub deployment_id: DeploymentId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A digest a person took back after it was verified: it is no longer a rollback or
/// promotion candidate here, and pushes of it are ignored until it is deployed by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revocation {
    pub by: String,
    pub reason: String,
    /// The tag it was verified with, for people reading the status.
    pub tag: Option<Tag>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Everything pushdeploy knows about one (app, environment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvState {
    pub app: AppName,
    pub environment: EnvName,
    pub current: Option<Current>,
    pub lease: Option<Lease>,
    pub queued: Option<Queued>,
    pub frozen: Option<Freeze>,
    /// Most recent first; at most `KEEP_VERIFIED`.
    pub verified: Vec<VerifiedDigest>,
    /// Digests that failed here; pushes of them are ignored until one is deployed by hand.
    pub quarantined: BTreeMap<String, Quarantine>,
    /// A promotion waiting for approval or for its digest to be verified at the source.
    #[serde(default)]
    pub pending: Option<Pending>,
    /// An approved promotion whose place in `pending` a newer one took before the deployer
    /// started it: a person decided it, so it still deploys (on its `Promotion Approved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<Pending>,
    /// What became of earlier pending promotions, newest first.
    #[serde(default)]
    pub decisions: Vec<Decision>,
    /// Digests revoked here, by digest; at most `KEEP_REVOKED`.
    #[serde(default)]
    pub revoked: BTreeMap<String, Revocation>,
    /// The image held until its vulnerability scan result is known (`scan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting_scan: Option<AwaitingScan>,
    /// Scan results of the repository's digests, by digest; at most `KEEP_SCANS`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scans: BTreeMap<String, ScanResult>,
    #[serde(skip)]
    pub version: u64,
}

/// What a request does to an environment.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    Start,
    /// Waits behind the deployment in flight, or for the unfreeze (`None`).
    Queue {
        behind: Option<DeploymentId>,
    },
    Skip(SkipReason),
}

/// Why a request starts nothing. Each is a normal outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    Frozen(String),
    Quarantined(String),
    Revoked(String),
    AlreadyCurrent(DeploymentId),
    AlreadyInFlight(DeploymentId),
    AlreadyQueued,
    OlderThanCurrent,
    OlderThanQueued,
    /// `only_newer`: the request's version is lower than one here already.
    LowerVersion {
        version: String,
        here: String,
    },
    /// The digest already waits for its vulnerability scan here.
    AlreadyAwaitingScan,
    /// A newer image waits for its vulnerability scan here.
    OlderThanAwaitingScan,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Frozen(why) => write!(
                f,
                "the environment is frozen ({why}); unfreeze it or deploy by hand"
            ),
            SkipReason::Quarantined(why) => {
                write!(
                    f,
                    "the digest is quarantined here ({why}); deploy it by hand to lift the quarantine"
                )
            }
            SkipReason::Revoked(why) => write!(
                f,
                "the digest was revoked here ({why}); deploy it by hand to lift the revocation"
            ),
            SkipReason::AlreadyCurrent(id) => {
                write!(f, "the digest is already deployed here (deployment {id})")
            }
            SkipReason::AlreadyInFlight(id) => {
                write!(f, "the digest is being rolled out now (deployment {id})")
            }
            SkipReason::AlreadyQueued => write!(f, "the digest is already queued"),
            SkipReason::OlderThanCurrent => write!(f, "a newer image is already deployed here"),
            SkipReason::OlderThanQueued => write!(f, "a newer image is already queued"),
            SkipReason::LowerVersion { version, here } => write!(
                f,
                "version {version} is lower than {here}, which this environment runs or has queued, and only_newer is set; deploy it by hand to go back"
            ),
            SkipReason::AlreadyAwaitingScan => {
                write!(f, "the digest already waits for its vulnerability scan")
            }
            SkipReason::OlderThanAwaitingScan => {
                write!(f, "a newer image waits for its vulnerability scan")
            }
        }
    }
}

impl EnvState {
    pub fn new(app: AppName, environment: EnvName) -> Self {
        Self {
            app,
            environment,
            current: None,
            lease: None,
            queued: None,
            frozen: None,
            verified: Vec::new(),
            quarantined: BTreeMap::new(),
            pending: None,
            approved: None,
            decisions: Vec::new(),
            revoked: BTreeMap::new(),
            awaiting_scan: None,
            scans: BTreeMap::new(),
            version: 0,
        }
    }

    /// Decides what `request` does here. Pushes respect freezes, quarantines, push order
    /// (latest wins, never out of order) and, with `only_newer`, version order; a request
    /// by hand overrides them, because it is how a person takes control.
    pub fn admit(&self, request: &Request, only_newer: bool) -> Admission {
        // Pushes and promotions nobody asked for by hand are automatic.
        let automatic = request.kind == Kind::Push
            || (request.kind == Kind::Promotion && request.requested_by.is_none());
        let digest = &request.image.digest;
        // A push made before the freeze (its handling was held up, or retried) waits for
        // the unfreeze as an image queued before the freeze does.
        let waits_for_unfreeze = self
            .frozen
            .as_ref()
            .is_some_and(|f| request.kind == Kind::Push && request.pushed_at < f.at);
        if automatic {
            if let Some(freeze) = self.frozen.as_ref().filter(|_| !waits_for_unfreeze) {
                return Admission::Skip(SkipReason::Frozen(freeze.reason.clone()));
            }
            if let Some(r) = self.revoked.get(digest.as_str()) {
                return Admission::Skip(SkipReason::Revoked(format!("by {}: {}", r.by, r.reason)));
            }
            if let Some(q) = self.quarantined.get(digest.as_str()) {
                return Admission::Skip(SkipReason::Quarantined(q.reason.clone()));
            }
            if only_newer && let Some(skip) = self.lower_version(request) {
                return Admission::Skip(skip);
            }
        }
        let current_is_newer = self
            .current
            .as_ref()
            .is_some_and(|c| c.pushed_at > request.pushed_at);
        match &self.lease {
            Some(lease) => {
                if self.current.as_ref().is_some_and(|c| &c.digest == digest) {
                    return Admission::Skip(SkipReason::AlreadyInFlight(
                        lease.deployment_id.clone(),
                    ));
                }
                if let Some(queued) = &self.queued {
                    if &queued.image.digest == digest {
                        return Admission::Skip(SkipReason::AlreadyQueued);
                    }
                    if automatic && queued.pushed_at > request.pushed_at {
                        return Admission::Skip(SkipReason::OlderThanQueued);
                    }
                }
                if automatic && current_is_newer {
                    return Admission::Skip(SkipReason::OlderThanCurrent);
                }
                Admission::Queue {
                    behind: Some(lease.deployment_id.clone()),
                }
            }
            None => {
                // Only a frozen environment is free with an image queued.
                if let Some(queued) = self.queued.as_ref().filter(|_| automatic) {
                    if &queued.image.digest == digest {
                        return Admission::Skip(SkipReason::AlreadyQueued);
                    }
                    if automatic && queued.pushed_at > request.pushed_at {
                        return Admission::Skip(SkipReason::OlderThanQueued);
                    }
                }
                if automatic {
                    if let Some(current) = self.current.as_ref().filter(|c| &c.digest == digest) {
                        return Admission::Skip(SkipReason::AlreadyCurrent(
                            current.deployment_id.clone(),
                        ));
                    }
                    if current_is_newer {
                        return Admission::Skip(SkipReason::OlderThanCurrent);
                    }
                }
                if waits_for_unfreeze {
                    return Admission::Queue { behind: None };
                }
                Admission::Start
            }
        }
    }

    /// The highest version this environment runs or has queued, when the request's tag
    /// names a lower one. Tags that name no version are not compared.
    fn lower_version(&self, request: &Request) -> Option<SkipReason> {
        let version = request.tag.as_ref().and_then(version_of)?;
        let here = [
            self.current.as_ref().and_then(|c| c.tag.as_ref()),
            self.queued.as_ref().and_then(|q| q.tag.as_ref()),
        ]
        .into_iter()
        .flatten()
        .filter_map(|t| version_of(t).map(|v| (v, t)))
        .max_by(|a, b| a.0.cmp(&b.0))?;
        (version < here.0).then(|| SkipReason::LowerVersion {
            version: request.tag.as_ref().map(Tag::to_string).unwrap_or_default(),
            here: here.1.to_string(),
        })
    }

    /// Hands the environment to `deployment`, remembering in it what ran before.
    /// A rollback keeps the queue: pushes waiting behind the failure still go next.
    pub fn start(&mut self, deployment: &mut Deployment) {
        deployment.previous = self.current.clone();
        self.lease = Some(Lease {
            deployment_id: deployment.id.clone(),
            since: deployment.created_at,
        });
        self.current = Some(Current {
            deployment_id: deployment.id.clone(),
            digest: deployment.image.digest.clone(),
            tag: deployment.tag.clone(),
            pushed_at: deployment.pushed_at,
        });
        let superseded = self.queued.as_ref().is_some_and(|q| {
            q.image.digest == deployment.image.digest
                || (deployment.kind != Kind::Rollback && q.pushed_at <= deployment.pushed_at)
        });
        if superseded {
            self.queued = None;
        }
        if deployment.kind == Kind::Manual {
            self.quarantined.remove(deployment.image.digest.as_str());
            self.revoked.remove(deployment.image.digest.as_str());
        }
    }

    pub fn queue(&mut self, request: &Request) {
        self.queued = Some(Queued::from(request));
    }

    pub fn holder(&self) -> Option<&DeploymentId> {
        self.lease.as_ref().map(|l| &l.deployment_id)
    }

    pub fn is_held_by(&self, id: &DeploymentId) -> bool {
        self.holder() == Some(id)
    }

    /// Frees the environment if `id` holds it.
    pub fn release(&mut self, id: &DeploymentId) -> bool {
        if self.is_held_by(id) {
            self.lease = None;
            true
        } else {
            false
        }
    }

    /// Takes the queued image, if the environment is free and not frozen.
    pub fn take_queued(&mut self) -> Option<Queued> {
        if self.lease.is_some() || self.frozen.is_some() {
            return None;
        }
        self.queued.take()
    }

    /// Takes `digest` back: it leaves the verified digests (so no rollback, promotion or
    /// environment tag picks it) and pushes of it are skipped. Returns false when it was
    /// already revoked; beyond `KEEP_REVOKED`, the oldest revocation is forgotten.
    pub fn revoke(&mut self, digest: &Digest, by: &str, reason: &str, at: OffsetDateTime) -> bool {
        if self.revoked.contains_key(digest.as_str()) {
            return false;
        }
        let tag = self
            .verified
            .iter()
            .find(|v| &v.digest == digest)
            .and_then(|v| v.tag.clone())
            .or_else(|| {
                self.current
                    .as_ref()
                    .filter(|c| &c.digest == digest)
                    .and_then(|c| c.tag.clone())
            });
        self.verified.retain(|v| &v.digest != digest);
        self.revoked.insert(
            digest.as_str().to_owned(),
            Revocation {
                by: by.to_owned(),
                reason: super::deployment::bounded_to(reason, QUARANTINE_REASON),
                tag,
                at,
            },
        );
        while self.revoked.len() > KEEP_REVOKED {
            let oldest = self
                .revoked
                .iter()
                .min_by(|a, b| (a.1.at, a.0).cmp(&(b.1.at, b.0)))
                .map(|(digest, _)| digest.clone());
            match oldest {
                Some(digest) => self.revoked.remove(&digest),
                None => break,
            };
        }
        true
    }

    /// Records the scan result of `digest`; false when the same counts were recorded
    /// already. Beyond `KEEP_SCANS`, the oldest result is forgotten.
    pub fn record_scan(&mut self, digest: &Digest, result: ScanResult) -> bool {
        if self
            .scans
            .get(digest.as_str())
            .is_some_and(|r| r.counts == result.counts)
        {
            return false;
        }
        self.scans.insert(digest.as_str().to_owned(), result);
        while self.scans.len() > KEEP_SCANS {
            let oldest = self
                .scans
                .iter()
                .min_by(|a, b| (a.1.at, a.0).cmp(&(b.1.at, b.0)))
                .map(|(digest, _)| digest.clone());
            match oldest {
                Some(digest) => self.scans.remove(&digest),
                None => break,
            };
        }
        true
    }

    pub fn scan_of(&self, digest: &Digest) -> Option<&ScanResult> {
        self.scans.get(digest.as_str())
    }

    pub fn is_revoked(&self, digest: &Digest) -> bool {
        self.revoked.contains_key(digest.as_str())
    }

    pub fn record_verified(&mut self, deployment: &Deployment, at: OffsetDateTime) {
        let digest = deployment.image.digest.clone();
        self.verified.retain(|v| v.digest != digest);
        self.verified.insert(
            0,
            VerifiedDigest {
                digest: digest.clone(),
                tag: deployment.tag.clone(),
                deployment_id: deployment.id.clone(),
                at,
            },
        );
        self.verified.truncate(KEEP_VERIFIED);
        self.quarantined.remove(digest.as_str());
    }

    /// Quarantines the digest of `deployment` here; beyond `KEEP_QUARANTINED`, the oldest
    /// quarantine is lifted. A rollback's digest is not: it was verified here, and its
    /// failure freezes the environment for a person to judge instead.
    pub fn quarantine(&mut self, deployment: &Deployment, reason: &str, at: OffsetDateTime) {
        if deployment.kind == Kind::Rollback {
            return;
        }
        self.quarantined.insert(
            deployment.image.digest.as_str().to_owned(),
            Quarantine {
                // The whole reason stays on the deployment's own record.
                reason: super::deployment::bounded_to(reason, QUARANTINE_REASON),
                deployment_id: deployment.id.clone(),
                at,
            },
        );
        while self.quarantined.len() > KEEP_QUARANTINED {
            let oldest = self
                .quarantined
                .iter()
                .min_by(|a, b| {
                    (a.1.at, a.1.deployment_id.as_str()).cmp(&(b.1.at, b.1.deployment_id.as_str()))
                })
                .map(|(digest, _)| digest.clone());
            match oldest {
                Some(digest) => self.quarantined.remove(&digest),
                None => break,
            };
        }
    }

    /// Verified digests a rollback from `failed` may use, most recent first.
    pub fn rollback_candidates<'a>(
        &'a self,
        failed: &'a Digest,
    ) -> impl Iterator<Item = &'a VerifiedDigest> + 'a {
        self.verified.iter().filter(move |v| {
            &v.digest != failed && !self.quarantined.contains_key(v.digest.as_str())
        })
    }

    pub fn last_verified(&self) -> Option<&VerifiedDigest> {
        self.verified.first()
    }
}

/// Promotions held here.
impl EnvState {
    /// Holds a promotion here, superseding any other not yet approved. Holding the same
    /// digest again changes nothing, except that a digest once waiting for verification now
    /// waits for approval. An approved one is not superseded: it moves aside to `approved`,
    /// where it waits for the deployer to start it (of two approved, the newer goes).
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
        if previous.approved.is_some() {
            let aside = previous.digest().clone();
            let older = self.approved.replace(previous)?;
            self.decide(
                older.digest().clone(),
                Outcome::Superseded { by: aside },
                now,
            );
            return Some(older);
        }
        self.decide(previous.digest().clone(), Outcome::Superseded { by }, now);
        Some(previous)
    }

    /// The approved promotion of `digest` not started yet, wherever it waits.
    pub fn approved_promotion(&self, digest: &Digest) -> Option<&Pending> {
        [self.pending.as_ref(), self.approved.as_ref()]
            .into_iter()
            .flatten()
            .find(|p| p.digest() == digest && p.approved.is_some())
    }

    /// Takes the promotion of `digest` out of `pending` and `approved` once it goes ahead:
    /// what became of it is recorded (approved by someone, or deployed without waiting).
    pub fn settle_promotion(&mut self, digest: &Digest, now: OffsetDateTime) {
        let settled = [
            self.pending.take_if(|p| p.digest() == digest),
            self.approved.take_if(|p| p.digest() == digest),
        ];
        for p in settled.into_iter().flatten() {
            let outcome = match p.approved {
                Some(a) => Outcome::Approved { by: a.by },
                None => Outcome::Deployed,
            };
            self.decide(digest.clone(), outcome, now);
        }
    }

    /// Checks that `digest` may be approved or rejected now, and returns the pending
    /// promotion. An expired one is recorded as such.
    pub fn pending_for(
        &mut self,
        digest: &Digest,
        now: OffsetDateTime,
    ) -> Result<&mut Pending, ApprovalError> {
        let env = self.environment.clone();
        if let Some(aside) = self.approved.as_ref().filter(|p| p.digest() == digest)
            && let Some(approved) = &aside.approved
        {
            return Err(already_approved(env, digest, approved));
        }
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
            return Err(already_approved(env, digest, approved));
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
        self.pending
            .as_mut()
            .ok_or(ApprovalError::NothingPending { env })
    }

    /// When `by` already made this very decision about `digest` (a request repeated after
    /// its answer was lost): the time they made it.
    pub fn same_decision(
        &self,
        digest: &Digest,
        by: &str,
        approving: bool,
    ) -> Option<OffsetDateTime> {
        if approving
            && let Some(approved) = self
                .approved_promotion(digest)
                .and_then(|p| p.approved.as_ref())
        {
            return (approved.by == by).then_some(approved.at);
        }
        let decision = self.decisions.iter().find(|d| &d.digest == digest)?;
        match &decision.outcome {
            Outcome::Approved { by: who } if approving && who == by => Some(decision.at),
            Outcome::Rejected { by: who, .. } if !approving && who == by => Some(decision.at),
            _ => None,
        }
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

/// Why `digest` cannot be approved again: `approved` decided it.
fn already_approved(
    env: EnvName,
    digest: &Digest,
    approved: &super::approval::Approved,
) -> ApprovalError {
    ApprovalError::AlreadyDecided {
        env,
        digest: digest.clone(),
        what: format!(
            "was already approved by {} at {}",
            approved.by,
            rfc3339(approved.at)
        ),
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    fn image(n: u8) -> PinnedImage {
        PinnedImage::parse(&format!(
            "localhost:5000/web@sha256:{}",
            format!("{n:02x}").repeat(32)
        ))
        .unwrap()
    }

    fn request(n: u8, kind: Kind, minute: u8) -> Request {
        Request {
            image: image(n),
            tag: Some(Tag::parse(&format!("v{n}")).unwrap()),
            kind,
            pushed_at: datetime!(2026-01-01 10:00 UTC) + time::Duration::minutes(minute as i64),
            requested_by: None,
            reason: None,
        }
    }

    fn state() -> EnvState {
        EnvState::new(
            AppName::parse("web").unwrap(),
            EnvName::parse("staging").unwrap(),
        )
    }

    fn started(state: &mut EnvState, req: Request) -> Deployment {
        let mut d = Deployment::new(
            state.app.clone(),
            state.environment.clone(),
            req,
            datetime!(2026-01-01 11:00 UTC),
        );
        state.start(&mut d);
        d
    }

    fn versioned(n: u8, tag: &str, kind: Kind, minute: u8) -> Request {
        Request {
            tag: Some(Tag::parse(tag).unwrap()),
            ..request(n, kind, minute)
        }
    }

    #[test]
    fn with_only_newer_a_lower_version_pushed_later_is_skipped_saying_why() {
        let mut s = state();
        let d = started(&mut s, versioned(1, "1.4.0", Kind::Push, 0));
        s.release(&d.id);
        let hotfix = versioned(2, "1.3.9", Kind::Push, 5);
        let Admission::Skip(reason) = s.admit(&hotfix, true) else {
            panic!("1.3.9 after 1.4.0 must be skipped");
        };
        assert_eq!(
            reason,
            SkipReason::LowerVersion {
                version: "1.3.9".into(),
                here: "1.4.0".into()
            }
        );
        let said = reason.to_string();
        assert!(
            said.contains("1.3.9")
                && said.contains("1.4.0")
                && said.contains("only_newer")
                && said.contains("by hand"),
            "{said}"
        );
        // Without only_newer it is the latest push, and it deploys.
        assert_eq!(s.admit(&hotfix, false), Admission::Start);
        // By hand it still may.
        assert_eq!(
            s.admit(&versioned(2, "1.3.9", Kind::Manual, 5), true),
            Admission::Start
        );
        // Newer and equal versions (a rebuild of 1.4.0) go on; versions order by semver.
        assert_eq!(
            s.admit(&versioned(3, "v1.10.0", Kind::Push, 6), true),
            Admission::Start
        );
        assert_eq!(
            s.admit(&versioned(4, "1.4.0", Kind::Push, 7), true),
            Admission::Start
        );
        // A tag that names no version is not compared.
        assert_eq!(
            s.admit(&versioned(5, "main-abc", Kind::Push, 8), true),
            Admission::Start
        );
    }

    #[test]
    fn with_only_newer_a_lower_version_than_the_queued_one_is_skipped() {
        let mut s = state();
        started(&mut s, versioned(1, "1.2.0", Kind::Push, 0));
        s.queue(&versioned(2, "1.5.0", Kind::Push, 1));
        assert_eq!(
            s.admit(&versioned(3, "1.4.0", Kind::Push, 2), true),
            Admission::Skip(SkipReason::LowerVersion {
                version: "1.4.0".into(),
                here: "1.5.0".into()
            })
        );
        assert!(matches!(
            s.admit(&versioned(3, "1.6.0", Kind::Push, 2), true),
            Admission::Queue { .. }
        ));
    }

    #[test]
    fn a_free_environment_starts_a_push() {
        assert_eq!(
            state().admit(&request(1, Kind::Push, 0), false),
            Admission::Start
        );
    }

    #[test]
    fn a_push_during_a_rollout_is_queued_behind_it() {
        let mut s = state();
        let d = started(&mut s, request(1, Kind::Push, 0));
        assert_eq!(
            s.admit(&request(2, Kind::Push, 1), false),
            Admission::Queue { behind: Some(d.id) }
        );
    }

    #[test]
    fn the_same_digest_twice_starts_nothing() {
        let mut s = state();
        let d = started(&mut s, request(1, Kind::Push, 0));
        assert_eq!(
            s.admit(&request(1, Kind::Push, 1), false),
            Admission::Skip(SkipReason::AlreadyInFlight(d.id.clone()))
        );
        s.release(&d.id);
        assert_eq!(
            s.admit(&request(1, Kind::Push, 2), false),
            Admission::Skip(SkipReason::AlreadyCurrent(d.id))
        );
    }

    #[test]
    fn an_older_push_arriving_late_never_replaces_a_newer_queued_one() {
        let mut s = state();
        started(&mut s, request(1, Kind::Push, 0));
        s.queue(&request(3, Kind::Push, 3));
        assert_eq!(
            s.admit(&request(2, Kind::Push, 2), false),
            Admission::Skip(SkipReason::OlderThanQueued)
        );
    }

    #[test]
    fn frozen_and_quarantined_block_pushes_but_not_people() {
        let mut s = state();
        s.frozen = Some(Freeze {
            reason: "rollback failed".into(),
            by: "pushdeploy".into(),
            at: datetime!(2026-01-01 0:00 UTC),
        });
        assert!(matches!(
            s.admit(&request(1, Kind::Push, 0), false),
            Admission::Skip(SkipReason::Frozen(_))
        ));
        assert_eq!(
            s.admit(&request(1, Kind::Manual, 0), false),
            Admission::Start
        );
        s.frozen = None;
        let d = started(&mut s, request(1, Kind::Push, 0));
        s.quarantine(&d, "smoke test failed", d.created_at);
        s.release(&d.id);
        s.current = None;
        assert!(matches!(
            s.admit(&request(1, Kind::Push, 5), false),
            Admission::Skip(SkipReason::Quarantined(_))
        ));
        let manual = started(&mut s, request(1, Kind::Manual, 6));
        assert!(
            s.quarantined.is_empty(),
            "deploying by hand lifts the quarantine"
        );
        assert!(s.is_held_by(&manual.id));
    }

    #[test]
    fn ten_thousand_failures_leave_the_environment_record_far_under_dynamodbs_item_limit() {
        let mut s = state();
        let reason = "x".repeat(100_000);
        for i in 0..10_000u32 {
            let mut req = request(1, Kind::Push, 0);
            req.image.digest = Digest::parse(&format!("sha256:{i:064x}")).unwrap();
            req.pushed_at += time::Duration::seconds(i64::from(i));
            let d = started(&mut s, req);
            s.quarantine(
                &d,
                &reason,
                d.created_at + time::Duration::seconds(i64::from(i)),
            );
            assert!(s.release(&d.id));
        }
        let body = serde_json::to_string(&s).unwrap();
        println!(
            "after 10,000 failures: {} quarantined, the record is {} bytes",
            s.quarantined.len(),
            body.len()
        );
        assert_eq!(s.quarantined.len(), KEEP_QUARANTINED);
        assert!(
            s.quarantined
                .contains_key(&format!("sha256:{:064x}", 9_999)),
            "the newest failures are the ones kept"
        );
        assert!(body.len() < 400_000, "{} bytes", body.len());
    }

    #[test]
    fn a_push_made_before_the_freeze_waits_for_the_unfreeze() {
        let mut s = state();
        s.frozen = Some(Freeze {
            reason: "holidays".into(),
            by: "alice".into(),
            at: datetime!(2026-01-01 10:02 UTC),
        });
        let before = request(1, Kind::Push, 1);
        assert_eq!(s.admit(&before, false), Admission::Queue { behind: None });
        s.queue(&before);
        assert_eq!(
            s.admit(&request(1, Kind::Push, 1), false),
            Admission::Skip(SkipReason::AlreadyQueued)
        );
        assert_eq!(
            s.admit(&request(2, Kind::Push, 0), false),
            Admission::Skip(SkipReason::OlderThanQueued)
        );
        assert!(matches!(
            s.admit(&request(3, Kind::Push, 3), false),
            Admission::Skip(SkipReason::Frozen(_))
        ));
        // A person still deploys what they name, now.
        assert_eq!(
            s.admit(&request(1, Kind::Manual, 4), false),
            Admission::Start
        );
        let d = started(&mut s, request(4, Kind::Manual, 0));
        assert_eq!(
            s.admit(&request(5, Kind::Push, 1), false),
            Admission::Queue { behind: Some(d.id) },
            "behind what runs, then still waiting for the unfreeze"
        );
    }

    #[test]
    fn taking_the_queue_needs_a_free_unfrozen_environment() {
        let mut s = state();
        let d = started(&mut s, request(1, Kind::Push, 0));
        s.queue(&request(2, Kind::Push, 1));
        assert!(s.take_queued().is_none());
        assert!(s.release(&d.id));
        s.frozen = Some(Freeze {
            reason: "x".into(),
            by: "y".into(),
            at: d.created_at,
        });
        assert!(s.take_queued().is_none());
        s.frozen = None;
        assert_eq!(s.take_queued().unwrap().image, image(2));
        assert!(s.queued.is_none());
    }

    #[test]
    fn rollback_candidates_skip_the_failed_and_quarantined_digests() {
        let mut s = state();
        for n in 1..=3 {
            let d = started(&mut s, request(n, Kind::Push, n));
            s.record_verified(&d, d.created_at);
            s.release(&d.id);
        }
        let failed = image(3).digest;
        let third = Deployment::new(
            s.app.clone(),
            s.environment.clone(),
            request(2, Kind::Push, 9),
            datetime!(2026-01-01 12:00 UTC),
        );
        s.quarantine(&third, "bad", third.created_at);
        let candidates: Vec<_> = s
            .rollback_candidates(&failed)
            .map(|v| v.digest.clone())
            .collect();
        assert_eq!(candidates, vec![image(1).digest]);
    }

    #[test]
    fn a_revoked_digest_leaves_the_candidates_pushes_of_it_skip_and_a_deploy_by_hand_lifts_it() {
        let mut s = state();
        for n in 1..=3 {
            let d = started(&mut s, request(n, Kind::Push, n));
            s.record_verified(&d, d.created_at);
            s.release(&d.id);
        }
        let at = datetime!(2026-01-01 13:00 UTC);
        assert!(s.revoke(&image(2).digest, "alice", "CVE-2026-1234", at));
        assert!(
            !s.revoke(&image(2).digest, "bob", "again", at),
            "revoking twice changes nothing"
        );
        assert_eq!(s.revoked[image(2).digest.as_str()].by, "alice");
        assert_eq!(
            s.revoked[image(2).digest.as_str()]
                .tag
                .as_ref()
                .map(Tag::as_str),
            Some("v2"),
            "the tag it was verified with is kept for the status"
        );
        let candidates: Vec<_> = s
            .rollback_candidates(&image(3).digest)
            .map(|v| v.digest.clone())
            .collect();
        assert_eq!(candidates, vec![image(1).digest]);
        // The running digest revoked: the last verified is the one before it.
        s.revoke(&image(3).digest, "alice", "bad", at);
        assert_eq!(s.last_verified().unwrap().digest, image(1).digest);
        // A push of it, even a newer one, is skipped and says why; by hand it goes.
        match s.admit(&request(2, Kind::Push, 30), false) {
            Admission::Skip(reason) => assert_eq!(
                reason.to_string(),
                "the digest was revoked here (by alice: CVE-2026-1234); deploy it by hand to lift the revocation"
            ),
            other => panic!("{other:?}"),
        }
        let by_hand = Request {
            requested_by: Some("carol".into()),
            ..request(2, Kind::Manual, 31)
        };
        assert_eq!(s.admit(&by_hand, false), Admission::Start);
        started(&mut s, by_hand);
        assert!(!s.is_revoked(&image(2).digest));
        assert!(s.is_revoked(&image(3).digest));
    }

    #[test]
    fn an_environment_remembers_its_latest_revocations_only() {
        let mut s = state();
        let start = datetime!(2026-01-01 13:00 UTC);
        for n in 0..=KEEP_REVOKED as u8 {
            s.revoke(
                &image(n).digest,
                "alice",
                "bad",
                start + time::Duration::minutes(n.into()),
            );
        }
        assert_eq!(s.revoked.len(), KEEP_REVOKED);
        assert!(!s.is_revoked(&image(0).digest), "the oldest is forgotten");
        assert!(s.is_revoked(&image(KEEP_REVOKED as u8).digest));
    }

    fn promotion(n: u8, approved_by: Option<&str>) -> Pending {
        let at = datetime!(2026-01-01 12:00 UTC);
        Pending {
            image: image(n),
            tag: None,
            from: EnvName::parse("staging").unwrap(),
            waiting_for: Waiting::Approval,
            pushed_at: at,
            since: at,
            expires_at: Some(at + time::Duration::days(1)),
            reason: "verified in staging".into(),
            approved: approved_by.map(|by| super::super::approval::Approved { by: by.into(), at }),
        }
    }

    #[test]
    fn an_approved_promotion_is_set_aside_not_superseded_and_of_two_approved_the_newer_goes() {
        let mut s = state();
        let at = datetime!(2026-01-01 13:00 UTC);
        assert!(s.hold(promotion(1, Some("alice")), at).is_none());
        // A newer verification: its approval is asked for; the approved one still goes.
        assert!(s.hold(promotion(2, None), at).is_none());
        assert_eq!(s.pending.as_ref().unwrap().digest(), &image(2).digest);
        assert_eq!(
            s.approved_promotion(&image(1).digest).unwrap().digest(),
            &image(1).digest
        );
        assert!(s.decisions.is_empty(), "nothing was superseded");
        // Approving the one set aside again is answered as already decided.
        assert!(matches!(
            s.pending_for(&image(1).digest, at),
            Err(ApprovalError::AlreadyDecided { .. })
        ));
        assert!(s.same_decision(&image(1).digest, "alice", true).is_some());
        // A third verification while the second is approved: the older approved one is
        // superseded by the newer approved one.
        s.pending.as_mut().unwrap().approved = Some(super::super::approval::Approved {
            by: "bob".into(),
            at,
        });
        let superseded = s.hold(promotion(3, None), at).unwrap();
        assert_eq!(superseded.digest(), &image(1).digest);
        assert_eq!(
            s.decisions[0].outcome,
            Outcome::Superseded {
                by: image(2).digest
            }
        );
        assert_eq!(s.approved.as_ref().unwrap().digest(), &image(2).digest);
        // Once it goes ahead, it leaves its slot, recorded as approved.
        s.settle_promotion(&image(2).digest, at);
        assert!(s.approved.is_none());
        assert_eq!(
            s.decisions[0].outcome,
            Outcome::Approved { by: "bob".into() }
        );
        assert_eq!(s.pending.as_ref().unwrap().digest(), &image(3).digest);
    }

    proptest! {
        /// Whatever order pushes arrive in, once the rollout in flight ends the queue holds
        /// the newest of them, and nothing older than the running image is ever queued.
        #[test]
        fn latest_push_wins_whatever_the_arrival_order(order in Just((2u8..8).collect::<Vec<_>>()).prop_shuffle()) {
            let mut s = state();
            started(&mut s, request(1, Kind::Push, 1));
            for n in &order {
                let req = request(*n, Kind::Push, *n);
                if let Admission::Queue { .. } = s.admit(&req, false) {
                    s.queue(&req);
                }
            }
            prop_assert_eq!(s.queued.unwrap().image, image(7));
        }

        #[test]
        fn verified_history_is_bounded_and_unique(digests in proptest::collection::vec(1u8..6, 0..40)) {
            let mut s = state();
            for n in digests {
                let d = started(&mut s, request(n, Kind::Manual, n));
                s.record_verified(&d, d.created_at);
                s.release(&d.id);
            }
            prop_assert!(s.verified.len() <= KEEP_VERIFIED);
            let mut seen = std::collections::HashSet::new();
            prop_assert!(s.verified.iter().all(|v| seen.insert(v.digest.clone())));
        }
    }
}
