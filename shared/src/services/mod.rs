//! The use cases, written against the ports only: what happens on a push, a status
//! change, a finished rollout, a failure, and a person's request.

pub mod control;
pub mod deploy;
pub mod error;
pub mod gate;
pub mod janitor;
pub mod notify;
pub mod platform;
pub mod promote;
pub mod rollback;
pub mod rollout;
pub mod track;
pub mod verify;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::domain::{AppName, Deployment, EnvName, LifecycleEvent};
use crate::metrics::Meter;
use crate::ports::{Clock, ConfigSource, EventPublisher, OutboxEntry, StateStore, StoreError};

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
    pub meter: Meter,
}

/// How long an undelivered event is left to the function that recorded it before the
/// reconciler delivers it.
pub const DELIVERY_GRACE: Duration = Duration::from_secs(30);

impl Core {
    /// Reads `dep` again, as stored: another writer changed it since it was read.
    pub(crate) async fn reread(&self, dep: &mut Deployment) -> Result<(), ServiceError> {
        *dep = self
            .store
            .deployment(&dep.app, &dep.environment, &dep.id)
            .await?;
        Ok(())
    }

    /// Outbox entries for events about environments, to commit with the change they
    /// announce and `announce` after it.
    pub(crate) fn outbox(&self, events: Vec<LifecycleEvent>) -> Vec<OutboxEntry> {
        let now = self.clock.now();
        events
            .into_iter()
            .filter_map(|event| {
                let detail = event.deployment()?.clone();
                Some(OutboxEntry {
                    id: ulid::Ulid::from_datetime(now.into()).to_string(),
                    detail_type: event.detail_type,
                    detail,
                })
            })
            .collect()
    }

    /// After the commit that recorded `entries`: measures each change, then delivers the
    /// events and clears them from the outbox. A delivery that fails is not this
    /// invocation's failure: the change is recorded, and the next to run (a retry, the
    /// reconciler at the latest) delivers it.
    pub(crate) async fn announce(&self, entries: Vec<OutboxEntry>) {
        for entry in &entries {
            self.meter.record(&entry.event());
        }
        if let Err(error) = self.deliver(&entries).await {
            warn!(error = %error.chain(), events = entries.len(), "events recorded but not delivered yet; the reconciler delivers them");
        }
    }

    /// Publishes `entries` and clears them from their outboxes.
    async fn deliver(&self, entries: &[OutboxEntry]) -> Result<(), ServiceError> {
        if entries.is_empty() {
            return Ok(());
        }
        let events: Vec<LifecycleEvent> = entries.iter().map(OutboxEntry::event).collect();
        self.events.publish(&events).await?;
        let mut by_env: BTreeMap<(AppName, EnvName), Vec<String>> = BTreeMap::new();
        for e in entries {
            by_env
                .entry((e.detail.app.clone(), e.detail.environment.clone()))
                .or_default()
                .push(e.id.clone());
        }
        for ((app, env), ids) in by_env {
            self.store.delivered(&app, &env, &ids).await?;
        }
        Ok(())
    }

    /// Delivers the events an environment recorded more than `DELIVERY_GRACE` ago and
    /// nobody delivered (its function stopped, or the bus refused them); how many.
    pub(crate) async fn deliver_left_over(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<usize, ServiceError> {
        let now = self.clock.now();
        let left: Vec<OutboxEntry> = self
            .store
            .undelivered(app, env)
            .await?
            .into_iter()
            .filter(|e| e.recorded_at().is_none_or(|at| now - at >= DELIVERY_GRACE))
            .collect();
        self.deliver(&left).await?;
        Ok(left.len())
    }
}

/// How often a read–decide–commit is redone when another writer got there first.
pub(crate) const MAX_ATTEMPTS: usize = 8;

/// The pause before the first retry of a conflicting write; doubled after each.
const CONFLICT_BACKOFF: Duration = Duration::from_millis(5);

/// A pause of about `base`: anywhere from half of it to all of it, so that callers that
/// failed together do not retry together.
pub(crate) fn jittered(base: Duration) -> Duration {
    let random = ulid::Ulid::new().random() as u64;
    let half = base / 2;
    let spread = half.as_micros() as u64;
    half + Duration::from_micros(if spread == 0 {
        0
    } else {
        random % (spread + 1)
    })
}

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
        if n > 0 {
            // Writers that met each other retry apart, not in step.
            tokio::time::sleep(jittered(CONFLICT_BACKOFF * (1 << n.min(5)))).await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jittered_pause_lies_between_half_and_all_of_its_base_and_varies() {
        let base = Duration::from_millis(200);
        let pauses: Vec<Duration> = (0..50).map(|_| jittered(base)).collect();
        assert!(pauses.iter().all(|p| *p >= base / 2 && *p <= base));
        assert!(pauses.iter().any(|p| *p != pauses[0]), "{pauses:?}");
    }
}
