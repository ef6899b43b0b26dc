//! What each function does with what it receives: one module per function, each with the
//! typed input it reads (an enum, parsed once: AWS and lifecycle events by `source` and
//! `detail-type`, console requests by `action`) and one `handle`, the very function Lambda
//! calls. `ROUTES` says which events reach which function; `template.yaml`'s rules are
//! checked against it, and the integration tests deliver events by it.

use crate::adapters::{codedeploy, ecs, ssm};
use crate::domain::EventType;
use crate::inbound::{Envelope, TargetEvents};
use crate::services::InputError;

pub mod control;
pub mod deployer;
pub mod janitor;
pub mod notifier;
pub mod rollback;
pub mod tracker;
pub mod verifier;

/// The functions of the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Function {
    Deployer,
    Tracker,
    Verifier,
    Rollback,
    Control,
    Janitor,
    Notifier,
}

impl Function {
    pub const ALL: [Function; 7] = [
        Function::Deployer,
        Function::Tracker,
        Function::Verifier,
        Function::Rollback,
        Function::Control,
        Function::Janitor,
        Function::Notifier,
    ];

    /// The package, binary and function name (`deployer`).
    pub fn name(self) -> &'static str {
        match self {
            Function::Deployer => "deployer",
            Function::Tracker => "tracker",
            Function::Verifier => "verifier",
            Function::Rollback => "rollback",
            Function::Control => "control",
            Function::Janitor => "janitor",
            Function::Notifier => "notifier",
        }
    }

    /// The function as a sentence names it.
    pub fn phrase(self) -> &'static str {
        match self {
            Function::Deployer => "the deployer",
            Function::Tracker => "the tracker",
            Function::Verifier => "the verifier",
            Function::Rollback => "the rollback function",
            Function::Control => "control",
            Function::Janitor => "the janitor",
            Function::Notifier => "the notifier",
        }
    }

    /// The console actions it takes; empty when it takes no request by hand.
    pub fn actions(self) -> &'static [&'static str] {
        match self {
            Function::Deployer => deployer::CONSOLE.actions,
            Function::Tracker => tracker::CONSOLE.actions,
            Function::Rollback => rollback::CONSOLE.actions,
            Function::Control => control::CONSOLE.actions,
            Function::Janitor => janitor::CONSOLE.actions,
            Function::Verifier | Function::Notifier => &[],
        }
    }
}

/// Where a function's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// The account's default bus: AWS's own events.
    Default,
    /// pushdeploy's own bus: its lifecycle events.
    Pushdeploy,
}

/// What makes a function run, besides a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An EventBridge rule.
    Rule {
        bus: Bus,
        source: &'static str,
        detail_types: &'static [&'static str],
        /// What the rule matches in `detail`, field by field.
        detail: &'static [(&'static str, &'static [&'static str])],
    },
    /// A schedule, its expression the template parameter named here; it sends a
    /// `Scheduled Event` from `aws.events`.
    Schedule { parameter: &'static str },
}

/// One way events reach one function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub function: Function,
    pub trigger: Trigger,
}

impl Route {
    const fn lifecycle(function: Function, detail_types: &'static [&'static str]) -> Self {
        Route {
            function,
            trigger: Trigger::Rule {
                bus: Bus::Pushdeploy,
                source: crate::domain::event::SOURCE,
                detail_types,
                detail: &[],
            },
        }
    }

    const fn target(events: &'static TargetEvents) -> Self {
        Route {
            function: Function::Tracker,
            trigger: Trigger::Rule {
                bus: Bus::Default,
                source: events.source,
                detail_types: events.detail_types,
                detail: events.detail,
            },
        }
    }

    /// Whether this route carries an event with this source and detail-type.
    pub fn carries(&self, source: &str, detail_type: &str) -> bool {
        match self.trigger {
            Trigger::Rule {
                source: s,
                detail_types,
                ..
            } => s == source && detail_types.contains(&detail_type),
            Trigger::Schedule { .. } => (source, detail_type) == (SCHEDULE_SOURCE, SCHEDULED_EVENT),
        }
    }
}

pub const SCHEDULE_SOURCE: &str = "aws.events";
pub const SCHEDULED_EVENT: &str = "Scheduled Event";
pub const ECR_SOURCE: &str = "aws.ecr";
pub const ECR_IMAGE_ACTION: &str = "ECR Image Action";
/// ECR basic scanning's result.
pub const ECR_IMAGE_SCAN: &str = "ECR Image Scan";
pub const INSPECTOR_SOURCE: &str = "aws.inspector2";
/// Amazon Inspector's (ECR enhanced scanning's) first result for an image.
pub const INSPECTOR_SCAN: &str = "Inspector2 Scan";
pub const CLOUDWATCH_SOURCE: &str = "aws.cloudwatch";
pub const ALARM_STATE_CHANGE: &str = "CloudWatch Alarm State Change";

/// The status events of every kind of target, each read by its own adapter.
pub const TARGET_EVENTS: [&TargetEvents; 3] = [
    &ssm::events::EVENTS,
    &ecs::events::EVENTS,
    &codedeploy::events::EVENTS,
];

/// Which events reach which function. Console requests reach a function directly; their
/// actions are `Function::actions`.
pub const ROUTES: &[Route] = &[
    Route {
        function: Function::Deployer,
        trigger: Trigger::Rule {
            bus: Bus::Default,
            source: ECR_SOURCE,
            detail_types: &[ECR_IMAGE_ACTION],
            detail: &[("action-type", &["PUSH"]), ("result", &["SUCCESS"])],
        },
    },
    Route {
        function: Function::Deployer,
        trigger: Trigger::Rule {
            bus: Bus::Default,
            source: ECR_SOURCE,
            detail_types: &[ECR_IMAGE_SCAN],
            detail: &[("scan-status", &["COMPLETE"])],
        },
    },
    Route {
        function: Function::Deployer,
        trigger: Trigger::Rule {
            bus: Bus::Default,
            source: INSPECTOR_SOURCE,
            detail_types: &[INSPECTOR_SCAN],
            detail: &[("scan-status", &["INITIAL_SCAN_COMPLETE"])],
        },
    },
    Route::lifecycle(
        Function::Deployer,
        &[
            EventType::DeploymentVerified.as_str(),
            EventType::DeploymentFailed.as_str(),
            EventType::EnvironmentUnfrozen.as_str(),
            EventType::PromotionApproved.as_str(),
        ],
    ),
    Route::target(TARGET_EVENTS[0]),
    Route::target(TARGET_EVENTS[1]),
    Route::target(TARGET_EVENTS[2]),
    Route {
        function: Function::Tracker,
        trigger: Trigger::Schedule {
            parameter: "ReconcileSchedule",
        },
    },
    Route::lifecycle(Function::Tracker, &[EventType::DeploymentAborted.as_str()]),
    Route::lifecycle(
        Function::Verifier,
        &[
            EventType::RolloutSucceeded.as_str(),
            EventType::VerificationDue.as_str(),
        ],
    ),
    Route {
        function: Function::Verifier,
        trigger: Trigger::Rule {
            bus: Bus::Default,
            source: CLOUDWATCH_SOURCE,
            detail_types: &[ALARM_STATE_CHANGE],
            detail: &[],
        },
    },
    Route::lifecycle(
        Function::Rollback,
        &[
            EventType::RolloutFailed.as_str(),
            EventType::VerificationFailed.as_str(),
            EventType::ImageRevoked.as_str(),
            EventType::RollbackDue.as_str(),
        ],
    ),
    Route {
        function: Function::Janitor,
        trigger: Trigger::Schedule {
            parameter: "JanitorSchedule",
        },
    },
    // Exactly the events with a message for people (`notice::notice_of`).
    Route::lifecycle(
        Function::Notifier,
        &[
            EventType::RolloutStarted.as_str(),
            EventType::RolloutFailed.as_str(),
            EventType::DeploymentVerified.as_str(),
            EventType::VerificationFailed.as_str(),
            EventType::RollbackSucceeded.as_str(),
            EventType::RollbackFailed.as_str(),
            EventType::ApprovalRequested.as_str(),
            EventType::ImageRevoked.as_str(),
            EventType::DeploymentBlocked.as_str(),
        ],
    ),
];

/// The functions an event with this source and detail-type reaches.
pub fn routed_to(source: &str, detail_type: &str) -> Vec<Function> {
    let mut functions: Vec<Function> = ROUTES
        .iter()
        .filter(|r| r.carries(source, detail_type))
        .map(|r| r.function)
        .collect();
    functions.dedup();
    functions
}

/// A lifecycle event about a deployment that does not say which.
pub(crate) fn no_deployment_id(kind: EventType) -> InputError {
    InputError::Field {
        what: format!("\"{kind}\" event detail"),
        field: Some("detail.deployment_id".into()),
        problem: "the event names no deployment".into(),
    }
}

/// Refuses an event `function` is not routed; what each entrypoint checks first.
pub(crate) fn check_routed(function: Function, envelope: &Envelope) -> Result<(), InputError> {
    if routed_to(&envelope.source, &envelope.detail_type).contains(&function) {
        Ok(())
    } else {
        Err(InputError::NotHandled {
            function: function.phrase(),
            event_source: envelope.source.clone(),
            detail_type: envelope.detail_type.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
