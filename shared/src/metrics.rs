//! CloudWatch metrics from the lifecycle events, as Embedded Metric Format (EMF) lines on
//! standard output: CloudWatch Logs turns them into metrics, with no API call and no
//! extra latency. Every change is measured once, by the function that recorded it, right
//! after its commit: the metrics (and the alarms on them) follow what was recorded, whether
//! or not the event bus took its event at once.
//!
//! Each metric is recorded twice: per app and environment, and with no dimension, so
//! that one alarm and one graph cover every environment.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

use crate::domain::{Detail, EventType, Kind, LifecycleEvent};

/// The namespace when `PUSHDEPLOY_METRICS_NAMESPACE` is not set.
pub const DEFAULT_NAMESPACE: &str = "pushdeploy";

/// Every metric pushdeploy emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// A rollout of a pushed, manual or promoted image started (rollbacks are not counted).
    RolloutStarted,
    /// Such a rollout was verified.
    RolloutSucceeded,
    /// Such a rollout failed on the target or in its smoke tests.
    RolloutFailed,
    /// A failed rollout was replaced by the last verified image.
    RolledBack,
    /// A rollback failed: the environment is frozen.
    RollbackFailed,
    /// Seconds from the ECR push to the verification of a pushed image.
    PushToVerified,
    /// Seconds from a failure to the start of its rollback.
    FailureToRollback,
    /// Images the janitor deleted.
    ImagesDeleted,
    /// Verified digests a person revoked.
    ImagesRevoked,
    /// Images the vulnerability gate refused.
    ImagesBlocked,
}

impl Metric {
    pub const ALL: [Metric; 10] = [
        Metric::RolloutStarted,
        Metric::RolloutSucceeded,
        Metric::RolloutFailed,
        Metric::RolledBack,
        Metric::RollbackFailed,
        Metric::PushToVerified,
        Metric::FailureToRollback,
        Metric::ImagesDeleted,
        Metric::ImagesRevoked,
        Metric::ImagesBlocked,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::RolloutStarted => "RolloutStarted",
            Metric::RolloutSucceeded => "RolloutSucceeded",
            Metric::RolloutFailed => "RolloutFailed",
            Metric::RolledBack => "RolledBack",
            Metric::RollbackFailed => "RollbackFailed",
            Metric::PushToVerified => "PushToVerified",
            Metric::FailureToRollback => "FailureToRollback",
            Metric::ImagesDeleted => "ImagesDeleted",
            Metric::ImagesRevoked => "ImagesRevoked",
            Metric::ImagesBlocked => "ImagesBlocked",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::PushToVerified | Metric::FailureToRollback => "Seconds",
            _ => "Count",
        }
    }
}

/// What one event measures: values, and the dimensions they are recorded under.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub dimensions: Vec<(&'static str, String)>,
    pub values: Vec<(Metric, f64)>,
}

/// The metrics an event stands for; empty for events that measure nothing.
pub fn measure(event: &LifecycleEvent) -> Option<Measurement> {
    let d = match &event.detail {
        Detail::Images(images) => {
            return Some(Measurement {
                dimensions: vec![("Repository", images.repository.to_string())],
                values: vec![(Metric::ImagesDeleted, images.digests.len() as f64)],
            });
        }
        Detail::Deployment(d) => d,
    };
    let rollback = d.kind == Some(Kind::Rollback);
    let seconds =
        |from: Option<time::OffsetDateTime>| from.map(|f| ((d.at - f).as_seconds_f64()).max(0.0));
    let values = match event.detail_type {
        EventType::RolloutStarted if !rollback => vec![(Metric::RolloutStarted, 1.0)],
        EventType::DeploymentVerified if !rollback => {
            let mut v = vec![(Metric::RolloutSucceeded, 1.0)];
            if d.kind == Some(Kind::Push)
                && let Some(s) = seconds(d.pushed_at)
            {
                v.push((Metric::PushToVerified, s));
            }
            v
        }
        EventType::RolloutFailed | EventType::VerificationFailed if !rollback => {
            vec![(Metric::RolloutFailed, 1.0)]
        }
        EventType::RollbackSucceeded => vec![(Metric::RolledBack, 1.0)],
        EventType::RollbackFailed => vec![(Metric::RollbackFailed, 1.0)],
        EventType::ImageRevoked => vec![(Metric::ImagesRevoked, 1.0)],
        EventType::DeploymentBlocked => vec![(Metric::ImagesBlocked, 1.0)],
        EventType::RollbackStarted => match seconds(d.failed_at) {
            Some(s) => vec![(Metric::FailureToRollback, s)],
            None => return None,
        },
        _ => return None,
    };
    Some(Measurement {
        dimensions: vec![
            ("App", d.app.to_string()),
            ("Environment", d.environment.to_string()),
        ],
        values,
    })
}

/// One EMF document: the measurement under its dimensions and under none.
pub fn emf_line(namespace: &str, timestamp_ms: i64, m: &Measurement) -> String {
    let names: Vec<&str> = m.dimensions.iter().map(|(k, _)| *k).collect();
    let metrics: Vec<Value> = m
        .values
        .iter()
        .map(|(metric, _)| json!({ "Name": metric.name(), "Unit": metric.unit() }))
        .collect();
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [names, Vec::<&str>::new()],
                "Metrics": metrics,
            }],
        }),
    );
    for (k, v) in &m.dimensions {
        root.insert((*k).into(), json!(v));
    }
    for (metric, value) in &m.values {
        root.insert(metric.name().into(), json!(value));
    }
    Value::Object(root).to_string()
}

/// Where EMF lines go: standard output in Lambda, memory in tests.
#[derive(Clone)]
pub enum Sink {
    Stdout,
    Memory(Arc<Mutex<Vec<String>>>),
}

impl Sink {
    fn write(&self, line: &str) {
        match self {
            // One write per line, so that concurrent log lines never interleave with it.
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(format!("{line}\n").as_bytes());
                let _ = out.flush();
            }
            Sink::Memory(lines) => lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line.to_owned()),
        }
    }
}

/// Writes the metrics of events.
#[derive(Clone)]
pub struct Meter {
    namespace: String,
    sink: Sink,
}

impl Meter {
    pub fn new(namespace: impl Into<String>, sink: Sink) -> Self {
        Self {
            namespace: namespace.into(),
            sink,
        }
    }

    /// Writes what `event` measures, if anything.
    pub fn record(&self, event: &LifecycleEvent) {
        if let Some(m) = measure(event) {
            let at = event.detail.at();
            let ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
            self.sink.write(&emf_line(&self.namespace, ms, &m));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        AppName, Deployment, Digest, EnvName, PinnedImage, Repository, Request, Step,
    };
    use time::macros::datetime;

    fn deployment(kind: Kind) -> Deployment {
        Deployment::new(
            AppName::parse("web").unwrap(),
            EnvName::parse("production").unwrap(),
            Request {
                image: PinnedImage::parse(&format!(
                    "123456789012.dkr.ecr.eu-west-1.amazonaws.com/acme/web@sha256:{}",
                    "a".repeat(64)
                ))
                .unwrap(),
                tag: None,
                kind,
                pushed_at: datetime!(2026-11-20 10:00 UTC),
                requested_by: None,
                reason: None,
            },
            datetime!(2026-11-20 10:00:05 UTC),
        )
    }

    /// Measures the events and parses the EMF lines back.
    async fn emitted(events: &[LifecycleEvent]) -> Vec<Value> {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let meter = Meter::new("pushdeploy/test", Sink::Memory(lines.clone()));
        for event in events {
            meter.record(event);
        }
        let lines = lines.lock().unwrap().clone();
        lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("an EMF line is one JSON document"))
            .collect()
    }

    /// Checks a document against the EMF specification's rules we rely on, and returns
    /// its metric values by name.
    fn values(doc: &Value) -> Vec<(String, f64)> {
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert!(doc["_aws"]["Timestamp"].as_i64().unwrap() > 0);
        assert_eq!(directive["Namespace"], "pushdeploy/test");
        for set in directive["Dimensions"].as_array().unwrap() {
            for key in set.as_array().unwrap() {
                assert!(
                    doc[key.as_str().unwrap()].is_string(),
                    "dimension {key} has no value"
                );
            }
        }
        directive["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let name = m["Name"].as_str().unwrap().to_owned();
                let metric = Metric::ALL.iter().find(|x| x.name() == name).unwrap();
                assert_eq!(m["Unit"], metric.unit());
                let value = doc[&name].as_f64().expect("the value sits at the root");
                (name, value)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_verified_push_counts_a_success_and_the_time_since_the_push() {
        let mut dep = deployment(Kind::Push);
        let t = datetime!(2026-11-20 10:03:00 UTC);
        for step in [
            Step::RolloutStarted,
            Step::RolloutSucceeded,
            Step::VerificationStarted,
            Step::VerificationPassed,
        ] {
            dep.apply(step, t, None).unwrap();
        }
        let docs = emitted(&[
            LifecycleEvent::of(EventType::RolloutStarted, &dep),
            LifecycleEvent::of(EventType::VerificationStarted, &dep),
            LifecycleEvent::of(EventType::DeploymentVerified, &dep),
        ])
        .await;
        assert_eq!(docs.len(), 2, "verification started measures nothing");
        assert_eq!(values(&docs[0]), vec![("RolloutStarted".into(), 1.0)]);
        assert_eq!(
            values(&docs[1]),
            vec![
                ("RolloutSucceeded".into(), 1.0),
                ("PushToVerified".into(), 180.0)
            ]
        );
        assert_eq!(docs[1]["App"], "web");
        assert_eq!(docs[1]["Environment"], "production");
        assert_eq!(
            docs[1]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["App", "Environment"], []])
        );
        assert_eq!(
            docs[1]["_aws"]["Timestamp"],
            t.unix_timestamp() * 1000,
            "the metric is dated by the event"
        );
    }

    #[tokio::test]
    async fn failures_rollbacks_and_their_delay_are_measured_and_rollbacks_are_not_rollouts() {
        let failed = deployment(Kind::Push);
        let mut rollback = deployment(Kind::Rollback);
        rollback.updated_at = datetime!(2026-11-20 10:05:30 UTC);
        let docs = emitted(&[
            LifecycleEvent::of(EventType::VerificationFailed, &failed),
            LifecycleEvent::of(EventType::RollbackStarted, &rollback)
                .with_failed_at(Some(datetime!(2026-11-20 10:05:00 UTC))),
            LifecycleEvent::of(EventType::RolloutStarted, &rollback),
            LifecycleEvent::of(EventType::DeploymentVerified, &rollback),
            LifecycleEvent::of(EventType::RollbackSucceeded, &failed),
            LifecycleEvent::of(EventType::RollbackFailed, &failed),
        ])
        .await;
        let all: Vec<(String, f64)> = docs.iter().flat_map(values).collect();
        assert_eq!(
            all,
            vec![
                ("RolloutFailed".into(), 1.0),
                ("FailureToRollback".into(), 30.0),
                ("RolledBack".into(), 1.0),
                ("RollbackFailed".into(), 1.0),
            ]
        );
    }

    #[tokio::test]
    async fn a_revocation_is_counted_per_environment() {
        let docs = emitted(&[LifecycleEvent::environment(
            EventType::ImageRevoked,
            &crate::domain::AppName::parse("web").unwrap(),
            &crate::domain::EnvName::parse("staging").unwrap(),
            Some("revoked by alice: bad".into()),
            datetime!(2026-11-20 10:00 UTC),
        )])
        .await;
        assert_eq!(values(&docs[0]), vec![("ImagesRevoked".into(), 1.0)]);
        assert_eq!(docs[0]["Environment"], "staging");
    }

    #[tokio::test]
    async fn a_blocked_image_is_counted_per_environment() {
        let docs = emitted(&[LifecycleEvent::environment(
            EventType::DeploymentBlocked,
            &crate::domain::AppName::parse("web").unwrap(),
            &crate::domain::EnvName::parse("staging").unwrap(),
            Some("its vulnerability scan found critical 1 > 0".into()),
            datetime!(2026-11-20 10:00 UTC),
        )])
        .await;
        assert_eq!(values(&docs[0]), vec![("ImagesBlocked".into(), 1.0)]);
        assert_eq!(docs[0]["App"], "web");
    }

    #[tokio::test]
    async fn deleted_images_are_counted_per_repository() {
        let digests = vec![Digest::parse(&format!("sha256:{}", "b".repeat(64))).unwrap(); 3];
        let docs = emitted(&[LifecycleEvent::images_deleted(
            &Repository::parse("acme/web").unwrap(),
            digests,
            datetime!(2026-11-20 10:00 UTC),
        )])
        .await;
        assert_eq!(values(&docs[0]), vec![("ImagesDeleted".into(), 3.0)]);
        assert_eq!(docs[0]["Repository"], "acme/web");
    }
}
