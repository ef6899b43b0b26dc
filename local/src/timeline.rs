//! What happened during a run, in order: pushdeploy's lifecycle events (read from the bus by
//! the harness's own audit rule), what the container host did, and what the harness did.
//! Printed as it happens by the demo, written to `logs/timeline.log` always, and waited on
//! by the demo and the end-to-end tests.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use time::OffsetDateTime;
use time::macros::format_description;
use tokio::sync::Notify;

/// Who an entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A lifecycle event pushdeploy published on its bus.
    Pushdeploy,
    /// The container host: Run Command invocations and their outcome.
    Host,
    /// The event router: failed invocations, retries, dead letters.
    Router,
    /// The harness itself: images built and pushed, checks made.
    Harness,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Pushdeploy => "pushdeploy",
            Source::Host => "host",
            Source::Router => "router",
            Source::Harness => "harness",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub at: OffsetDateTime,
    pub source: Source,
    /// A lifecycle event's detail-type, or a short label (`pushed`, `command finished`, …).
    pub kind: String,
    pub deployment_id: Option<String>,
    /// The lifecycle event's detail, or the facts of other entries.
    pub detail: Json,
    /// The line as printed.
    pub line: String,
}

impl Entry {
    pub fn is_event(&self, detail_type: &str) -> bool {
        self.source == Source::Pushdeploy && self.kind == detail_type
    }

    pub fn is_event_of(&self, detail_type: &str, deployment_id: &str) -> bool {
        self.is_event(detail_type) && self.deployment_id.as_deref() == Some(deployment_id)
    }

    /// A string field of the detail.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.detail.get(name).and_then(Json::as_str)
    }
}

#[derive(Clone)]
pub struct Timeline {
    inner: Arc<Inner>,
}

struct Inner {
    entries: Mutex<Vec<Entry>>,
    changed: Notify,
    print: bool,
    file: Mutex<Option<File>>,
}

impl Timeline {
    /// A timeline written to `log`, and printed to stdout when `print` is set.
    pub fn new(log: &Path, print: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                entries: Mutex::new(Vec::new()),
                changed: Notify::new(),
                print,
                file: Mutex::new(File::create(log).ok()),
            }),
        }
    }

    /// Records an entry that is not a lifecycle event.
    pub fn note(
        &self,
        source: Source,
        kind: &str,
        deployment_id: Option<&str>,
        detail: Json,
        text: &str,
    ) {
        let at = OffsetDateTime::now_utc();
        let line = format!("{}  {:<10} {:<22} {text}", clock(at), source.label(), kind);
        self.push(Entry {
            at,
            source,
            kind: kind.to_owned(),
            deployment_id: deployment_id.map(str::to_owned),
            detail,
            line,
        });
    }

    /// Records a lifecycle event as EventBridge delivered it.
    pub fn lifecycle(&self, event: &Json) {
        let kind = event
            .get("detail-type")
            .and_then(Json::as_str)
            .unwrap_or("?")
            .to_owned();
        let detail = event.get("detail").cloned().unwrap_or(Json::Null);
        let field = |name: &str| detail.get(name).and_then(Json::as_str);
        let at = field("at")
            .and_then(|t| {
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .unwrap_or_else(OffsetDateTime::now_utc);
        let deployment_id = field("deployment_id").map(str::to_owned);
        let mut text = format!(
            "{}/{}",
            field("app").unwrap_or("?"),
            field("environment").unwrap_or("?")
        );
        if let Some(id) = &deployment_id {
            text.push_str(&format!("  {id}"));
        }
        if let Some(digest) = field("digest") {
            text.push_str(&format!(
                "  {}{}",
                field("tag").map(|t| format!("{t} ")).unwrap_or_default(),
                short_digest(digest)
            ));
        }
        if let Some(kind) = field("kind") {
            text.push_str(&format!(" ({kind})"));
        }
        if let Some(of) = field("rollback_of") {
            text.push_str(&format!("  rolls back {of}"));
        }
        if let Some(reason) = field("reason") {
            text.push_str(&format!("  — {reason}"));
        }
        let line = format!(
            "{}  {:<10} {:<22} {text}",
            clock(at),
            Source::Pushdeploy.label(),
            kind
        );
        self.push(Entry {
            at,
            source: Source::Pushdeploy,
            kind,
            deployment_id,
            detail,
            line,
        });
    }

    fn push(&self, entry: Entry) {
        if self.inner.print {
            println!("{}", entry.line);
        }
        if let Some(f) = self.inner.file.lock().unwrap().as_mut() {
            let _ = writeln!(f, "{}", entry.line);
        }
        self.inner.entries.lock().unwrap().push(entry);
        self.inner.changed.notify_waiters();
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.inner.entries.lock().unwrap().clone()
    }

    /// The lifecycle events so far.
    pub fn events(&self) -> Vec<Entry> {
        self.entries()
            .into_iter()
            .filter(|e| e.source == Source::Pushdeploy)
            .collect()
    }

    /// Waits until `found` finds something in the entries so far, for at most `within`.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        mut found: impl FnMut(&[Entry]) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.inner.changed.notified();
            if let Some(t) = found(&self.inner.entries.lock().unwrap()) {
                return Ok(t);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                anyhow::bail!("waited {within:?} for {what}; it did not happen");
            }
        }
    }

    /// Waits for a lifecycle event of `detail_type` about `deployment_id`.
    pub async fn wait_for_event(
        &self,
        detail_type: &str,
        deployment_id: &str,
        within: Duration,
    ) -> anyhow::Result<Entry> {
        self.wait_for(
            &format!("\"{detail_type}\" of deployment {deployment_id}"),
            within,
            |entries| {
                entries
                    .iter()
                    .find(|e| e.is_event_of(detail_type, deployment_id))
                    .cloned()
            },
        )
        .await
    }
}

/// `sha256:28e7efe929d4…` → `28e7efe929d4`.
pub fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn clock(at: OffsetDateTime) -> String {
    at.format(format_description!(
        "[hour]:[minute]:[second].[subsecond digits:3]"
    ))
    .unwrap_or_default()
}
