//! The use cases, written against the ports only: what happens on a push, a status
//! change, a finished rollout, a failure, and a person's request.

pub mod control;
pub mod deploy;
pub mod error;
pub mod janitor;
pub mod notify;
pub mod promote;
pub mod rollback;
pub mod rollout;
pub mod track;
pub mod verify;

use std::sync::Arc;

use crate::ports::{Clock, ConfigSource, EventPublisher, StateStore, StoreError};

pub use control::Control;
pub use deploy::Deployer;
pub use error::{Context, InputError, Refusal, ServiceError};
pub use janitor::Janitor;
pub use notify::Notifier;
pub use rollback::Rollback;
pub use track::Tracker;
pub use verify::Verifier;

/// The dependencies every use case shares.
#[derive(Clone)]
pub struct Core {
    pub store: Arc<dyn StateStore>,
    pub events: Arc<dyn EventPublisher>,
    pub config: Arc<dyn ConfigSource>,
    pub clock: Arc<dyn Clock>,
}

/// How often a read–decide–commit is redone when another writer got there first.
pub(crate) const MAX_ATTEMPTS: usize = 8;

/// Runs a read–decide–commit until its commit wins. `attempt` reads what it needs, decides
/// and commits; when the commit meets a concurrent writer (`StoreError::Conflict`) it runs
/// again on fresh reads (it is told which attempt it is), at most `MAX_ATTEMPTS` times.
/// A dependency's failure is returned saying `what` was being done; any other outcome is
/// returned as it is.
pub(crate) async fn retry_on_conflict<T>(
    what: impl FnOnce() -> String,
    mut attempt: impl AsyncFnMut(usize) -> Result<T, ServiceError>,
) -> Result<T, ServiceError> {
    let mut record = String::new();
    for n in 0..MAX_ATTEMPTS {
        match attempt(n).await {
            Err(ServiceError::Store(StoreError::Conflict(r))) => record = r,
            Err(
                e @ (ServiceError::Store(_)
                | ServiceError::Registry(_)
                | ServiceError::Target(_)
                | ServiceError::Events(_)),
            ) => return Err(e.during(what())),
            other => return other,
        }
    }
    Err(ServiceError::Contended {
        what: what(),
        attempts: MAX_ATTEMPTS,
        record,
    })
}
