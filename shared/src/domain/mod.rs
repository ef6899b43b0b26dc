//! Pure types and rules: no I/O happens here.

pub mod approval;
pub mod config;
pub mod deployment;
pub mod environment;
pub mod event;
pub mod image;
pub mod lifecycle;
pub mod names;
pub mod notice;
pub mod platform;
pub mod policy;
pub mod retention;
pub mod scan;
pub mod text;

pub use config::{Config, ConfigError, EnvConfig, TargetConfig};
pub use deployment::{Deployment, DeploymentId, Request};
pub use environment::{Admission, EnvState, SkipReason};
pub use event::{Detail, EventDetail, EventType, ImagesDetail, LifecycleEvent};
pub use image::{Digest, ImageRef, ImageRefError, PinnedImage, Registry, Repository, Tag};
pub use lifecycle::{Kind, Outcome, Phase, Step};
pub use names::{AppName, EnvName};
