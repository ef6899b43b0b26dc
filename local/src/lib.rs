//! The local stack of pushdeploy: AWS's control plane emulated by moto, the functions as
//! their real binaries, event routing read from `template.yaml`, a local OCI registry
//! and a real container host.

pub mod moto;
pub mod template;
