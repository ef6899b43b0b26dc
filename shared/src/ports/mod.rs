//! Ports: one small trait per capability the services need. Adapters implement them over
//! AWS; the fakes in `crate::fakes` implement them in memory for tests.

pub mod clock;
pub mod config;
pub mod events;
pub mod probe;
pub mod registry;
pub mod secrets;
pub mod store;
pub mod target;
pub mod webhook;

pub use clock::{Clock, SystemClock};
pub use config::{ConfigLoadError, ConfigSource};
pub use events::{EventPublisher, PublishError};
pub use probe::{HttpProbe, ProbeError, ProbeResponse};
pub use registry::{
    DeleteFailure, ImageCatalog, ImagePage, ImageRegistry, ListedImage, MAX_BATCH, MAX_PAGE,
    RegistryError, ResolvedImage, TagMove, TagWriter,
};
pub use secrets::{SecretError, SecretSource};
pub use store::{Commit, StateStore, StoreError};
pub use target::{RolloutStatus, Started, Target, TargetError, TargetRef, Targets};
pub use webhook::{Webhook, WebhookError};

/// A boxed error kept as the `source` of a port's typed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
