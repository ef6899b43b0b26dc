//! The local stack of pushdeploy: AWS's control plane emulated by moto, the functions as
//! their real binaries, event routing read from `template.yaml`, a local OCI registry
//! and a real container host.

pub mod app;
pub mod demo;
pub mod document;
pub mod host;
pub mod images;
pub mod lambdas;
pub mod merge;
pub mod moto;
pub mod podman;
pub mod push;
pub mod registry;
pub mod router;
pub mod run;
pub mod signals;
pub mod stack;
pub mod template;
pub mod timeline;
pub mod up;
