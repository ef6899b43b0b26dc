//! The alarms an environment watches, read with CloudWatch's `DescribeAlarms`.

use async_trait::async_trait;
use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::types::{AlarmType, StateValue};

use super::aws::failed;
use crate::ports::{AlarmError, AlarmState, AlarmValue, Alarms};

/// `DescribeAlarms` takes at most this many names per call.
const NAMES_PER_CALL: usize = 100;

pub struct CloudWatchAlarms {
    client: Client,
}

impl CloudWatchAlarms {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

fn value(state: Option<&StateValue>) -> AlarmValue {
    match state {
        Some(StateValue::Ok) => AlarmValue::Ok,
        Some(StateValue::Alarm) => AlarmValue::Alarm,
        _ => AlarmValue::InsufficientData,
    }
}

#[async_trait]
impl Alarms for CloudWatchAlarms {
    async fn states(&self, names: &[String]) -> Result<Vec<AlarmState>, AlarmError> {
        let mut out = Vec::new();
        for chunk in names.chunks(NAMES_PER_CALL) {
            let mut next: Option<String> = None;
            loop {
                let answer = self
                    .client
                    .describe_alarms()
                    .set_alarm_names(Some(chunk.to_vec()))
                    .alarm_types(AlarmType::MetricAlarm)
                    .alarm_types(AlarmType::CompositeAlarm)
                    .set_next_token(next.take())
                    .send()
                    .await
                    .map_err(|e| failed(e, "DescribeAlarms"))?;
                for a in answer.metric_alarms() {
                    out.push(AlarmState {
                        name: a.alarm_name().unwrap_or_default().to_owned(),
                        value: value(a.state_value()),
                        reason: a.state_reason().unwrap_or_default().to_owned(),
                    });
                }
                for a in answer.composite_alarms() {
                    out.push(AlarmState {
                        name: a.alarm_name().unwrap_or_default().to_owned(),
                        value: value(a.state_value()),
                        reason: a.state_reason().unwrap_or_default().to_owned(),
                    });
                }
                match answer.next_token() {
                    Some(token) if !token.is_empty() => next = Some(token.to_owned()),
                    _ => break,
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_cloudwatch::operation::describe_alarms::DescribeAlarmsOutput;
    use aws_sdk_cloudwatch::types::{CompositeAlarm, MetricAlarm};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;

    #[tokio::test]
    async fn metric_and_composite_alarms_are_read_with_their_state_and_reason() {
        let rule = mock!(Client::describe_alarms)
            .match_requests(|r| r.alarm_names() == ["web-5xx", "web-latency"])
            .then_output(|| {
                DescribeAlarmsOutput::builder()
                    .metric_alarms(
                        MetricAlarm::builder()
                            .alarm_name("web-5xx")
                            .state_value(StateValue::Alarm)
                            .state_reason("Threshold Crossed: 1 datapoint [12.0] was greater than the threshold (5.0)")
                            .build(),
                    )
                    .composite_alarms(
                        CompositeAlarm::builder()
                            .alarm_name("web-latency")
                            .state_value(StateValue::Ok)
                            .build(),
                    )
                    .build()
            });
        let client = mock_client!(aws_sdk_cloudwatch, RuleMode::Sequential, [&rule]);
        let states = CloudWatchAlarms::new(client)
            .states(&["web-5xx".into(), "web-latency".into()])
            .await
            .unwrap();
        assert_eq!(states.len(), 2);
        assert_eq!(states[0].value, AlarmValue::Alarm);
        assert!(states[0].reason.contains("Threshold Crossed"));
        assert_eq!(states[1].name, "web-latency");
        assert_eq!(states[1].value, AlarmValue::Ok);
    }

    #[tokio::test]
    async fn access_denied_is_refused_and_throttling_is_retryable() {
        use aws_sdk_cloudwatch::operation::describe_alarms::DescribeAlarmsError;
        use aws_smithy_types::error::ErrorMetadata;
        let denied = mock!(Client::describe_alarms).then_error(|| {
            DescribeAlarmsError::generic(
                ErrorMetadata::builder()
                    .code("AccessDenied")
                    .message("not authorized to perform: cloudwatch:DescribeAlarms")
                    .build(),
            )
        });
        let client = mock_client!(aws_sdk_cloudwatch, RuleMode::Sequential, [&denied]);
        let err = CloudWatchAlarms::new(client)
            .states(&["web-5xx".into()])
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.to_string().contains("DescribeAlarms: AccessDenied"),
            "{err}"
        );
    }
}
