//! Why a use case did not complete, as typed errors that keep their cause; the stable error
//! types Lambda reports (so retries and dead-letter routing can tell what to retry from what
//! to fix); and one formatter that turns an error and every cause under it into one line,
//! for the logs and for the invocation's response.

use std::error::Error;
use std::fmt;

use crate::domain::approval::ApprovalError;
use crate::domain::lifecycle::InvalidTransition;
pub use crate::domain::text::{cut, quote};
use crate::domain::{AppName, DeploymentId, Digest, EnvName, Repository};
use crate::ports::{
    AlarmError, CallError, ConfigLoadError, PublishError, RegistryError, StoreError, TargetError,
};

/// The error types of a failed invocation. `Retryable` failures may succeed when tried
/// again unchanged; the others need someone to change the request, the configuration or
/// the world first.
pub mod error_type {
    pub const RETRYABLE: &str = "Retryable";
    pub const INVALID_INPUT: &str = "NonRetryable.InvalidInput";
    pub const NOT_FOUND: &str = "NonRetryable.NotFound";
    pub const CONFLICT: &str = "NonRetryable.Conflict";
    pub const CONFIGURATION: &str = "NonRetryable.Configuration";
    pub const DEPENDENCY: &str = "NonRetryable.Dependency";
    /// A failure of pushdeploy itself: a bug to report.
    pub const INTERNAL: &str = "NonRetryable.Internal";

    pub const ALL: [&str; 7] = [
        RETRYABLE,
        INVALID_INPUT,
        NOT_FOUND,
        CONFLICT,
        CONFIGURATION,
        DEPENDENCY,
        INTERNAL,
    ];
}

/// Why a use case did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The event or request cannot be read.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The request cannot be done as asked: it names something not configured or not there,
    /// or conflicts with what is happening now.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// An approval or rejection that cannot be made.
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    /// A step that does not follow from where the deployment is (a late or contradicting
    /// event).
    #[error("deployment {deployment}: {source}")]
    Transition {
        deployment: DeploymentId,
        #[source]
        source: InvalidTransition,
    },
    #[error(transparent)]
    Config(#[from] ConfigLoadError),
    #[error("state table: {0}")]
    Store(#[from] StoreError),
    #[error("image registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("target: {0}")]
    Target(#[from] TargetError),
    #[error("event bus: {0}")]
    Events(#[from] PublishError),
    #[error("alarms: {0}")]
    Alarms(#[from] AlarmError),
    /// Other writers kept changing a record between this one's read and its write.
    #[error("{what}: gave up after {attempts} attempts, {record} kept changing")]
    Contended {
        what: String,
        attempts: usize,
        record: String,
    },
    /// A pass over many environments or repositories finished some and not others; every
    /// other one was handled. Running again may finish the rest when `retryable`.
    #[error("{summary}")]
    Incomplete { summary: String, retryable: bool },
    /// A failure of pushdeploy itself (a response it could not encode).
    #[error("{0}")]
    Internal(String),
    /// A failure, with what was being done when it happened.
    #[error("{what}: {source}")]
    During {
        what: String,
        #[source]
        source: Box<ServiceError>,
    },
}

impl ServiceError {
    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        self.error_type() == error_type::RETRYABLE
    }

    /// A stable name for the kind of failure, for logs, retries and dead-letter routing.
    pub fn error_type(&self) -> &'static str {
        use error_type::*;
        match self {
            ServiceError::Input(_) => INVALID_INPUT,
            ServiceError::Refused(r) => r.error_type(),
            ServiceError::Approval(
                ApprovalError::NothingPending { .. } | ApprovalError::OtherDigest { .. },
            ) => NOT_FOUND,
            ServiceError::Approval(_) | ServiceError::Transition { .. } => CONFLICT,
            ServiceError::Config(ConfigLoadError::Unavailable {
                retryable: true, ..
            }) => RETRYABLE,
            ServiceError::Config(_) => CONFIGURATION,
            ServiceError::Store(e) => match e {
                StoreError::Throttled(_)
                | StoreError::Transient(_)
                | StoreError::Conflict(_)
                | StoreError::Held(_) => RETRYABLE,
                StoreError::NotFound(_) => NOT_FOUND,
                StoreError::Internal(_) => INTERNAL,
                StoreError::Duplicate(_) | StoreError::Refused(_) | StoreError::Corrupt { .. } => {
                    DEPENDENCY
                }
            },
            ServiceError::Registry(e) => match e {
                RegistryError::Throttled(_) | RegistryError::Transient(_) => RETRYABLE,
                RegistryError::NotFound(_) => NOT_FOUND,
                RegistryError::Refused(_) | RegistryError::Unreadable(_) => DEPENDENCY,
            },
            ServiceError::Target(e) if e.is_retryable() => RETRYABLE,
            ServiceError::Target(_) => DEPENDENCY,
            ServiceError::Events(e) => match e {
                PublishError::Throttled(_)
                | PublishError::Transient(_)
                | PublishError::Rejected { .. } => RETRYABLE,
                PublishError::Refused(_) => DEPENDENCY,
                PublishError::Unencodable(_) => INTERNAL,
            },
            ServiceError::Alarms(e) if e.is_retryable() => RETRYABLE,
            ServiceError::Alarms(_) => DEPENDENCY,
            ServiceError::Contended { .. } => RETRYABLE,
            ServiceError::Incomplete { retryable, .. } => {
                if *retryable {
                    RETRYABLE
                } else {
                    DEPENDENCY
                }
            }
            ServiceError::Internal(_) => INTERNAL,
            ServiceError::During { source, .. } => source.error_type(),
        }
    }

    /// This error, saying what was being done.
    pub fn during(self, what: impl Into<String>) -> Self {
        ServiceError::During {
            what: what.into(),
            source: Box::new(self),
        }
    }

    /// The error under the `During` context, if any.
    pub fn innermost(&self) -> &ServiceError {
        match self {
            ServiceError::During { source, .. } => source.innermost(),
            other => other,
        }
    }
}

/// Adds what was being done to a failure.
pub trait Context<T> {
    fn during(self, what: impl FnOnce() -> String) -> Result<T, ServiceError>;
}

impl<T, E: Into<ServiceError>> Context<T> for Result<T, E> {
    fn during(self, what: impl FnOnce() -> String) -> Result<T, ServiceError> {
        self.map_err(|e| e.into().during(what()))
    }
}

/// An event or request that cannot be read. Each names the field and what it may hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A field is missing, of the wrong type, or holds a value that is not allowed.
    #[error("invalid {}: {}{}", cut(what), field.as_ref().map(|f| format!("{}: ", quote(f))).unwrap_or_default(), cut(problem))]
    Field {
        /// What was being read ("deploy request", "\"ECR Image Action\" event detail").
        what: String,
        /// Where, as a path (`detail.image-digest`); `None` for the whole input.
        field: Option<String>,
        problem: String,
    },
    #[error(
        "unknown action {}; {function} accepts {}",
        quote(action),
        quoted(accepted)
    )]
    UnknownAction {
        /// The function, as a sentence names it ("the deployer", "control").
        function: &'static str,
        action: String,
        accepted: &'static [&'static str],
    },
    #[error(
        "{function} does not handle {} events from {}",
        quote(detail_type),
        quote(event_source)
    )]
    NotHandled {
        function: &'static str,
        event_source: String,
        detail_type: String,
    },
    /// The input is readable but breaks a rule of its own (the sentence says which).
    #[error("{}", cut(.0))]
    Rule(String),
}

fn quoted(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.as_slice() {
        [] => "nothing".into(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Names, listed for a person: `a, b` or `(none)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names(pub Vec<String>);

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(none)")
        } else {
            f.write_str(&self.0.join(", "))
        }
    }
}

impl<T: ToString> FromIterator<T> for Names {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Names(iter.into_iter().map(|n| n.to_string()).collect())
    }
}

/// A request that cannot be done as asked, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown app {:?}; configured apps: {known}", app.as_str())]
    UnknownApp { app: AppName, known: Names },
    #[error("app {:?} has no environment {:?}; its environments: {known}", app.as_str(), env.as_str())]
    UnknownEnv {
        app: AppName,
        env: EnvName,
        known: Names,
    },
    #[error(
        "no app with a retention rule uses repository {repository}; add `retention` to the app that deploys it"
    )]
    NoRetention { repository: Repository },
    #[error(
        "nothing was deployed to {app}/{env} yet, so the registry to pull from is unknown; set `registry` for the app"
    )]
    NoRegistry { app: AppName, env: EnvName },
    /// A tag or digest the registry does not have.
    #[error("{0}")]
    NotInRegistry(String),
    #[error("{digest} is no longer in repository {repository}; pick another verified digest")]
    ImageGone {
        digest: Digest,
        repository: Repository,
    },
    #[error("nothing has been verified in {app}/{env} yet: there is nothing to promote")]
    NothingVerified { app: AppName, env: EnvName },
    #[error(
        "{digest} was never verified in {app}/{env}; verified digests: {verified}. To deploy an unverified digest, use the deployer"
    )]
    NeverVerified {
        digest: Digest,
        app: AppName,
        env: EnvName,
        verified: Names,
    },
    #[error("{app}/{env} has no verified digest other than the current one (verified: {verified})")]
    NoOtherVerified {
        app: AppName,
        env: EnvName,
        verified: Names,
    },
    #[error(
        "deployment {holder} is in progress on {app}/{env}; wait for it to finish (a failure rolls back by itself)"
    )]
    InFlight {
        app: AppName,
        env: EnvName,
        holder: DeploymentId,
    },
    #[error("nothing is in flight on {app}/{env}: there is no deployment to abort")]
    NothingInFlight { app: AppName, env: EnvName },
    #[error(
        "{digest} was revoked in {app}/{env} by {by}: {reason}; it cannot be approved (deploy it there by hand to lift the revocation)"
    )]
    Revoked {
        digest: Digest,
        app: AppName,
        env: EnvName,
        by: String,
        reason: String,
    },
    #[error("deployment {id} of {app}/{env} does not exist")]
    NoSuchDeployment {
        app: AppName,
        env: EnvName,
        id: DeploymentId,
    },
}

impl Refusal {
    pub fn error_type(&self) -> &'static str {
        use error_type::*;
        match self {
            Refusal::UnknownApp { .. }
            | Refusal::UnknownEnv { .. }
            | Refusal::NoRetention { .. }
            | Refusal::NoRegistry { .. }
            | Refusal::NeverVerified { .. }
            | Refusal::NoOtherVerified { .. } => INVALID_INPUT,
            Refusal::NotInRegistry(_)
            | Refusal::ImageGone { .. }
            | Refusal::NothingVerified { .. }
            | Refusal::NothingInFlight { .. }
            | Refusal::NoSuchDeployment { .. } => NOT_FOUND,
            Refusal::InFlight { .. } | Refusal::Revoked { .. } => CONFLICT,
        }
    }
}

/// An error and every cause under it, on one line: `recording RolloutStarted for 01J…: state
/// table: TransactWriteItems: ThrottlingException: Rate exceeded`. A cause whose words its
/// parent already says is not repeated, and the chain ends at a failed call (`CallError`),
/// whose line already says what the client's error would.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut stop = error.downcast_ref::<CallError>().is_some();
    let mut cause = error.source();
    while let Some(e) = cause {
        if stop {
            break;
        }
        let text = e.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        stop = e.downcast_ref::<CallError>().is_some();
        cause = e.source();
    }
    line
}

impl ServiceError {
    /// `chain` of this error.
    pub fn chain(&self) -> String {
        chain(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttled() -> ServiceError {
        ServiceError::Store(StoreError::Throttled(CallError::new(
            "TransactWriteItems",
            "ThrottlingException: Rate exceeded",
            "the SDK's own words: service error".into(),
        )))
    }

    #[test]
    fn the_chain_says_what_was_done_and_every_cause_once() {
        let e = throttled().during("recording RolloutStarted for 01JD8Z6V6WQ5N8B9C3H4K2M7PX");
        assert_eq!(
            e.chain(),
            "recording RolloutStarted for 01JD8Z6V6WQ5N8B9C3H4K2M7PX: state table: TransactWriteItems: ThrottlingException: Rate exceeded"
        );
        assert_eq!(e.error_type(), error_type::RETRYABLE);
    }

    #[test]
    fn a_cause_left_out_of_its_parents_words_is_added() {
        let e = ServiceError::Config(ConfigLoadError::Unavailable {
            origin: "SSM parameter /pushdeploy/config".into(),
            retryable: false,
            source: CallError::new(
                "GetParameter",
                "AccessDeniedException: not authorized",
                "sdk".into(),
            ),
        });
        assert_eq!(
            e.chain(),
            "could not read the configuration from SSM parameter /pushdeploy/config: GetParameter: AccessDeniedException: not authorized"
        );
        assert_eq!(e.error_type(), error_type::CONFIGURATION);
    }

    #[test]
    fn a_partial_pass_is_retryable_only_when_a_retry_can_finish_it() {
        let retryable = ServiceError::Incomplete {
            summary: "x".into(),
            retryable: true,
        };
        let not = ServiceError::Incomplete {
            summary: "x".into(),
            retryable: false,
        };
        assert_eq!(retryable.error_type(), error_type::RETRYABLE);
        assert_eq!(not.error_type(), error_type::DEPENDENCY);
    }

    #[test]
    fn unknown_actions_list_what_is_accepted() {
        let e = InputError::UnknownAction {
            function: "control",
            action: "reboot".into(),
            accepted: &["status", "freeze", "unfreeze"],
        };
        assert_eq!(
            e.to_string(),
            "unknown action \"reboot\"; control accepts \"status\", \"freeze\" and \"unfreeze\""
        );
    }
}
