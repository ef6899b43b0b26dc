//! The ECS target: a service whose task definition gets a new revision per rollout, with
//! only the target container's image changed to `repository@sha256:…`. The service is
//! updated with the deployment circuit breaker on; the rollout is followed through the
//! service's deployment, and a rollback points the service back at the revision it ran
//! before when that revision pins the digest rolled back to.

use crate::ports::TargetRef;

pub mod events;
#[cfg(feature = "ecs")]
mod service;

#[cfg(feature = "ecs")]
pub use service::{DEPLOYMENT_TAG, EcsService, revisions_to_deregister};

/// The kind prefix of ECS target handles: `ecs:<cluster>/<service>/<ecs-deployment-id>`.
pub const KIND: &str = "ecs";

/// The handle of one ECS deployment of one service.
pub fn target_ref(cluster: &str, service: &str, deployment_id: &str) -> TargetRef {
    TargetRef::new(KIND, &format!("{cluster}/{service}/{deployment_id}"))
}
