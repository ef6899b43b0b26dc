//! The CodeDeploy target. On EC2/on-premises deployment groups each rollout uploads a
//! revision bundle to S3 whose appspec hooks run the same container logic as the SSM
//! document, pinned to the digest; on ECS blue/green groups it registers a task definition
//! revision (as the ECS target does) and names it in AppSpec content. CodeDeploy's own
//! automatic rollback stays on, and what it did is part of a failed rollout's reason.

pub mod events;

mod appspec;
#[cfg(feature = "codedeploy")]
mod bundle;
#[cfg(feature = "codedeploy")]
mod target;

pub use appspec::ecs_appspec;
#[cfg(feature = "codedeploy")]
pub use bundle::{DOCUMENT_SCRIPT, bundle_files, tar};
#[cfg(feature = "codedeploy")]
pub use target::CodeDeploy;

/// The kind prefix of CodeDeploy target handles: `codedeploy:<deployment-id>`.
pub const KIND: &str = "codedeploy";
