//! Reading the state of CloudWatch alarms, for the watch after the smoke tests.

use async_trait::async_trait;

use super::CallError;

/// An alarm's state, as CloudWatch reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmValue {
    Ok,
    Alarm,
    InsufficientData,
}

impl AlarmValue {
    /// CloudWatch's name for it: `OK`, `ALARM`, `INSUFFICIENT_DATA`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "OK" => Some(Self::Ok),
            "ALARM" => Some(Self::Alarm),
            "INSUFFICIENT_DATA" => Some(Self::InsufficientData),
            _ => None,
        }
    }
}

/// One alarm, now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmState {
    pub name: String,
    pub value: AlarmValue,
    /// CloudWatch's explanation of the state (`StateReason`).
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AlarmError {
    #[error("{0}")]
    Throttled(#[source] CallError),
    #[error("{0}")]
    Transient(#[source] CallError),
    /// Not allowed, or a request CloudWatch will not take: retrying will not help.
    #[error("{0}")]
    Refused(#[source] CallError),
}

super::from_call!(AlarmError);

impl AlarmError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, AlarmError::Refused(_))
    }
}

/// Reads alarms by name. Alarms that do not exist are absent from the answer.
#[async_trait]
pub trait Alarms: Send + Sync {
    async fn states(&self, names: &[String]) -> Result<Vec<AlarmState>, AlarmError>;
}
