//! The event router: the EventBridge rules of `template.yaml` (read from it, never copied)
//! are created in moto with an SQS queue as their target; the router drains each queue and
//! invokes the rule's function with the event, as Lambda's asynchronous invocation does —
//! retried twice on failure (or as the function's `EventInvokeConfig` says), then kept as a
//! dead letter, never dropped. moto runs no schedules, so the router also fires the
//! template's schedules itself. An audit rule of the harness's own (every `source:
//! pushdeploy` event on the application's bus) feeds the timeline.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use aws_config::SdkConfig;
use serde_json::{Value as Json, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::task::JoinHandle;

use crate::lambdas::Lambdas;
use crate::moto::{ACCOUNT, REGION};
use crate::timeline::{Source, Timeline};

/// Where one rule of the template delivers.
#[derive(Debug, Clone)]
pub struct Route {
    pub function: String,
    pub rule: String,
    /// The bus name in moto (`default` for AWS service events).
    pub bus: String,
    pub pattern: Json,
    pub queue_url: String,
}

/// A schedule of the template, fired by the router.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub function: String,
    pub rule: String,
    pub expression: String,
    pub every: Duration,
}

/// An event whose invocations all failed.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub function: String,
    pub event: Json,
    pub attempts: u32,
    pub error: String,
}

pub struct Router {
    pub routes: Vec<Route>,
    pub schedules: Vec<Schedule>,
    dead: Arc<Mutex<Vec<DeadLetter>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the router needs to deliver: the functions, where to put dead letters, and the
/// pause before each retry (Lambda waits about one and then two minutes; locally seconds).
#[derive(Clone)]
struct Delivery {
    lambdas: Arc<Lambdas>,
    timeline: Timeline,
    dead: Arc<Mutex<Vec<DeadLetter>>>,
    sqs: aws_sdk_sqs::Client,
    dead_letter_queue: Option<String>,
    retry_delays: Vec<Duration>,
}

/// A rule to create: its function, name, bus and resolved pattern.
pub struct RuleSpec {
    pub function: String,
    pub rule: String,
    pub bus: String,
    pub pattern: Json,
}

pub struct RouterConfig {
    pub rules: Vec<RuleSpec>,
    pub schedules: Vec<Schedule>,
    /// The application's bus, where the audit rule listens.
    pub app_bus: String,
    /// A queue URL in moto that receives dead letters too (the template's DLQ).
    pub dead_letter_queue: Option<String>,
    pub retry_delays: Vec<Duration>,
    /// A prefix for the router's queues and rules.
    pub prefix: String,
}

impl Router {
    pub async fn start(
        sdk: &SdkConfig,
        config: RouterConfig,
        lambdas: Arc<Lambdas>,
        timeline: Timeline,
    ) -> anyhow::Result<Self> {
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let events = aws_sdk_eventbridge::Client::new(sdk);
        let dead = Arc::new(Mutex::new(Vec::new()));
        let delivery = Delivery {
            lambdas,
            timeline: timeline.clone(),
            dead: dead.clone(),
            sqs: sqs.clone(),
            dead_letter_queue: config.dead_letter_queue.clone(),
            retry_delays: config.retry_delays.clone(),
        };
        let mut routes = Vec::new();
        let mut tasks = Vec::new();
        for spec in config.rules {
            let queue = format!("{}-{}", config.prefix, spec.rule);
            let queue_url =
                rule_to_queue(&events, &sqs, &spec.rule, &spec.bus, &spec.pattern, &queue)
                    .await
                    .with_context(|| format!("creating rule {} of {}", spec.rule, spec.function))?;
            let route = Route {
                function: spec.function,
                rule: spec.rule,
                bus: spec.bus,
                pattern: spec.pattern,
                queue_url,
            };
            tasks.push(tokio::spawn(drain(route.clone(), delivery.clone())));
            routes.push(route);
        }
        let audit_rule = format!("{}-audit", config.prefix);
        let audit_url = rule_to_queue(
            &events,
            &sqs,
            &audit_rule,
            &config.app_bus,
            &json!({ "source": ["pushdeploy"] }),
            &audit_rule,
        )
        .await
        .context("creating the audit rule")?;
        tasks.push(tokio::spawn(audit(sqs.clone(), audit_url, timeline)));
        for schedule in &config.schedules {
            events
                .put_rule()
                .name(&schedule.rule)
                .schedule_expression(&schedule.expression)
                .send()
                .await
                .with_context(|| format!("creating schedule rule {}", schedule.rule))?;
            tasks.push(tokio::spawn(tick(schedule.clone(), delivery.clone())));
        }
        Ok(Self {
            routes,
            schedules: config.schedules,
            dead,
            tasks,
        })
    }

    /// Events whose every invocation failed.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead.lock().unwrap().clone()
    }

    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates a queue, a rule on `bus` with `pattern`, and the rule's target: the queue.
async fn rule_to_queue(
    events: &aws_sdk_eventbridge::Client,
    sqs: &aws_sdk_sqs::Client,
    rule: &str,
    bus: &str,
    pattern: &Json,
    queue: &str,
) -> anyhow::Result<String> {
    let queue_name: String = queue
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(80)
        .collect();
    let url = sqs
        .create_queue()
        .queue_name(&queue_name)
        .send()
        .await
        .context("CreateQueue")?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    events
        .put_rule()
        .name(rule)
        .event_bus_name(bus)
        .event_pattern(pattern.to_string())
        .send()
        .await
        .context("PutRule")?;
    let out = events
        .put_targets()
        .rule(rule)
        .event_bus_name(bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("local-queue")
                .arn(format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{queue_name}"))
                .build()?,
        )
        .send()
        .await
        .context("PutTargets")?;
    if out.failed_entry_count() > 0 {
        anyhow::bail!("PutTargets refused the queue: {:?}", out.failed_entries());
    }
    Ok(url)
}

/// Receives what a queue holds (long polling), hands each event over for asynchronous
/// invocation and removes it from the queue.
async fn drain(route: Route, delivery: Delivery) {
    loop {
        let received = delivery
            .sqs
            .receive_message()
            .queue_url(&route.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await;
        let messages = match received {
            Ok(out) => out.messages().to_vec(),
            Err(e) => {
                delivery.timeline.note(
                    Source::Router,
                    "queue error",
                    None,
                    Json::Null,
                    &format!("receiving from {}: {e}", route.queue_url),
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for message in messages {
            let body = message.body().unwrap_or_default();
            match serde_json::from_str::<Json>(body) {
                Ok(event) => {
                    let d = delivery.clone();
                    let function = route.function.clone();
                    tokio::spawn(
                        async move { d.invoke_async(&function, as_aws_sends(event)).await },
                    );
                }
                Err(e) => delivery.timeline.note(
                    Source::Router,
                    "bad message",
                    None,
                    json!({ "body": body }),
                    &format!("{} queue held a message that is not JSON: {e}", route.rule),
                ),
            }
            if let Some(handle) = message.receipt_handle() {
                let _ = delivery
                    .sqs
                    .delete_message()
                    .queue_url(&route.queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await;
            }
        }
    }
}

/// moto leaves out the `account` of the events it delivers; AWS always sends it.
fn as_aws_sends(mut event: Json) -> Json {
    if let Some(obj) = event.as_object_mut() {
        obj.entry("account").or_insert_with(|| json!(ACCOUNT));
    }
    event
}

impl Delivery {
    /// One asynchronous invocation: the first attempt and its retries, then a dead letter.
    async fn invoke_async(&self, function: &str, event: Json) {
        let attempts = 1 + self
            .lambdas
            .function(function)
            .map(|f| f.retries)
            .unwrap_or(2);
        let mut last_error = String::new();
        for attempt in 1..=attempts {
            match self.lambdas.invoke(function, &event).await {
                Ok(_) => return,
                Err(e) => {
                    last_error = e.to_string();
                    self.timeline.note(
                        Source::Router,
                        "invocation failed",
                        event
                            .pointer("/detail/deployment_id")
                            .and_then(Json::as_str),
                        json!({ "function": function, "attempt": attempt, "error": last_error }),
                        &format!(
                            "{function} failed on {} (attempt {attempt} of {attempts}): {last_error}",
                            event.get("detail-type").and_then(Json::as_str).unwrap_or("an event")
                        ),
                    );
                }
            }
            if attempt < attempts {
                let pause = self
                    .retry_delays
                    .get(attempt as usize - 1)
                    .or(self.retry_delays.last())
                    .copied()
                    .unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(pause).await;
            }
        }
        self.timeline.note(
            Source::Router,
            "dead letter",
            event
                .pointer("/detail/deployment_id")
                .and_then(Json::as_str),
            json!({ "function": function, "event": event, "error": last_error }),
            &format!(
                "{function} gave up on {} after {attempts} attempts: {last_error}",
                event
                    .get("detail-type")
                    .and_then(Json::as_str)
                    .unwrap_or("an event")
            ),
        );
        if let Some(queue) = &self.dead_letter_queue {
            let _ = self
                .sqs
                .send_message()
                .queue_url(queue)
                .message_body(event.to_string())
                .message_attributes(
                    "ErrorMessage",
                    aws_sdk_sqs::types::MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(&last_error)
                        .build()
                        .expect("data type is set"),
                )
                .send()
                .await;
        }
        self.dead.lock().unwrap().push(DeadLetter {
            function: function.to_owned(),
            event,
            attempts,
            error: last_error,
        });
    }
}

/// Fires a schedule: the event EventBridge Scheduler sends, every `every`.
async fn tick(schedule: Schedule, delivery: Delivery) {
    let mut interval = tokio::time::interval(schedule.every);
    interval.tick().await; // the first tick is immediate; a schedule's is not
    loop {
        interval.tick().await;
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or_else(|_| OffsetDateTime::now_utc());
        let event = json!({
            "version": "0",
            "id": format!("{}-{}", schedule.rule, now.unix_timestamp()),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": ACCOUNT,
            "time": now.format(&Rfc3339).unwrap_or_default(),
            "region": REGION,
            "resources": [format!("arn:aws:events:{REGION}:{ACCOUNT}:rule/{}", schedule.rule)],
            "detail": {}
        });
        let d = delivery.clone();
        let function = schedule.function.clone();
        tokio::spawn(async move { d.invoke_async(&function, event).await });
    }
}

/// Feeds every lifecycle event on the application's bus to the timeline.
async fn audit(sqs: aws_sdk_sqs::Client, queue_url: String, timeline: Timeline) {
    loop {
        let Ok(out) = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
        else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        for message in out.messages() {
            if let Ok(event) = serde_json::from_str::<Json>(message.body().unwrap_or_default()) {
                timeline.lifecycle(&event);
            }
            if let Some(handle) = message.receipt_handle() {
                let _ = sqs
                    .delete_message()
                    .queue_url(&queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await;
            }
        }
    }
}

/// The period of `rate(N unit)`; `cron(...)` is not run locally.
pub fn rate(expression: &str) -> Option<Duration> {
    let inner = expression.trim().strip_prefix("rate(")?.strip_suffix(')')?;
    let (n, unit) = inner.trim().split_once(' ')?;
    let n: u64 = n.parse().ok()?;
    let seconds = match unit.trim().trim_end_matches('s') {
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(n * seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rate_expressions() {
        assert_eq!(rate("rate(1 minute)"), Some(Duration::from_secs(60)));
        assert_eq!(rate("rate(5 minutes)"), Some(Duration::from_secs(300)));
        assert_eq!(rate("rate(2 hours)"), Some(Duration::from_secs(7200)));
        assert_eq!(rate("cron(0 * * * ? *)"), None);
    }

    #[test]
    fn delivered_events_carry_the_account() {
        let event = as_aws_sends(json!({ "source": "aws.ecr", "detail": {} }));
        assert_eq!(event["account"], ACCOUNT);
        let kept = as_aws_sends(json!({ "account": "111111111111" }));
        assert_eq!(kept["account"], "111111111111");
    }
}
