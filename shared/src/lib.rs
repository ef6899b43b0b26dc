//! pushdeploy's common crate: the domain, the ports it needs from the world, the use cases
//! written against those ports, and the AWS adapters behind them (one cargo feature each,
//! so every function links only the SDK crates it uses).

pub mod adapters;
pub mod domain;
pub mod entrypoints;
pub mod inbound;
pub mod lambda;
pub mod metrics;
pub mod ports;
pub mod services;
pub mod settings;

#[cfg(any(test, feature = "fakes"))]
pub mod fakes;
#[cfg(test)]
mod faults;
