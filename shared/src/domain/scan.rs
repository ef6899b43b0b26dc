//! The vulnerability gate: an environment with a `scan` policy deploys an image
//! automatically only once its scan result (ECR basic scanning or Amazon Inspector) is
//! known and within the policy's thresholds. Results are kept by digest, so one that
//! arrived before the push was handled counts.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::environment::Queued;

/// How many scan results an environment keeps (the newest by arrival).
pub const KEEP_SCANS: usize = 20;

/// A finding severity, as ECR and Inspector name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Informational,
    Undefined,
}

impl Severity {
    pub const ALL: [Severity; 6] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Informational,
        Severity::Undefined,
    ];

    /// The configuration's name: `critical`, `high`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Informational => "informational",
            Severity::Undefined => "undefined",
        }
    }

    pub fn parse(name: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// ECR's and Inspector's key in `finding-severity-counts`: `CRITICAL`, `HIGH`, …
    /// (Inspector's `TOTAL` is no severity.)
    pub fn from_aws(key: &str) -> Option<Severity> {
        Severity::parse(&key.to_ascii_lowercase())
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Findings per severity. A severity with no findings is absent, and reads as 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Counts(pub BTreeMap<Severity, u32>);

impl Counts {
    pub fn of(&self, severity: Severity) -> u32 {
        self.0.get(&severity).copied().unwrap_or(0)
    }

    /// From `finding-severity-counts` as ECR or Inspector give it; keys that name no
    /// severity (`TOTAL`) are left out, and zeros are dropped.
    pub fn from_aws<'a>(counts: impl IntoIterator<Item = (&'a str, u64)>) -> Counts {
        let mut out = BTreeMap::new();
        for (key, n) in counts {
            if let Some(severity) = Severity::from_aws(key)
                && n > 0
            {
                out.insert(severity, u32::try_from(n).unwrap_or(u32::MAX));
            }
        }
        Counts(out)
    }
}

/// `critical 2, high 7`, or `no findings`.
impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no findings");
        }
        let mut first = true;
        for (severity, n) in &self.0 {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{severity} {n}")?;
        }
        Ok(())
    }
}

/// Which scanner produced a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scanner {
    /// ECR basic scanning (`ECR Image Scan`).
    Basic,
    /// Amazon Inspector, ECR's enhanced scanning (`Inspector2 Scan`).
    Enhanced,
    /// Read from ECR's `DescribeImageScanFindings` by the reconciler or the deployer.
    Registry,
}

/// A completed scan of one digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanResult {
    pub counts: Counts,
    pub scanner: Scanner,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What an environment does when no scan result comes in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    /// The image is not deployed (it is blocked, and may be deployed by hand).
    Hold,
    /// The image is deployed without a result.
    Deploy,
}

/// An environment's vulnerability gate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScanPolicy {
    /// The most findings allowed per severity; a severity not named is not limited.
    pub max: BTreeMap<Severity, u32>,
    #[serde(rename = "wait_seconds", serialize_with = "as_seconds")]
    pub wait: Duration,
    pub on_missing: OnMissing,
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl ScanPolicy {
    /// Why `counts` are over the thresholds (`critical 2 > 0, high 7 > 5`), or `None`.
    pub fn excess(&self, counts: &Counts) -> Option<String> {
        let over: Vec<String> = self
            .max
            .iter()
            .filter(|(severity, max)| counts.of(**severity) > **max)
            .map(|(severity, max)| format!("{severity} {} > {max}", counts.of(*severity)))
            .collect();
        (!over.is_empty()).then(|| over.join(", "))
    }

    /// The thresholds as people read them: `critical 0, high 5`.
    pub fn thresholds(&self) -> String {
        self.max
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// An image held until its scan result is known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwaitingScan {
    pub request: Queued,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// When `on_missing` decides.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// What the gate says of an image.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Within the thresholds, or let through without a result (`on_missing: deploy`).
    Pass(String),
    /// Over the thresholds, or no result in time with `on_missing: hold`.
    Block {
        reason: String,
        counts: Option<Counts>,
    },
    /// No result yet, and there is time left.
    Wait,
}

impl ScanPolicy {
    /// The verdict at `now` on an image whose scan result is `result` (`None`: not known
    /// yet) and that waits until `until` (`None`: it has not started waiting).
    pub fn verdict(
        &self,
        result: Option<&ScanResult>,
        until: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Verdict {
        match result {
            Some(r) => match self.excess(&r.counts) {
                Some(over) => Verdict::Block {
                    reason: format!(
                        "its vulnerability scan found {over} (this environment allows {})",
                        self.thresholds()
                    ),
                    counts: Some(r.counts.clone()),
                },
                None => Verdict::Pass(format!(
                    "its vulnerability scan found {} (allowed: {})",
                    r.counts,
                    self.thresholds()
                )),
            },
            None if until.is_some_and(|u| now >= u) => {
                let waited = self.wait.as_secs();
                match self.on_missing {
                    OnMissing::Deploy => Verdict::Pass(format!(
                        "no scan result came within {waited} s; on_missing: deploy lets it through"
                    )),
                    OnMissing::Hold => Verdict::Block {
                        reason: format!(
                            "no scan result came within {waited} s and on_missing is hold; deploy it by hand to deploy it unscanned"
                        ),
                        counts: None,
                    },
                }
            }
            None => Verdict::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn policy(max: &[(Severity, u32)], on_missing: OnMissing) -> ScanPolicy {
        ScanPolicy {
            max: max.iter().copied().collect(),
            wait: Duration::from_secs(900),
            on_missing,
        }
    }

    fn result(counts: &[(&str, u64)]) -> ScanResult {
        ScanResult {
            counts: Counts::from_aws(counts.iter().copied()),
            scanner: Scanner::Basic,
            at: datetime!(2026-12-01 10:00 UTC),
        }
    }

    #[test]
    fn an_absent_severity_reads_as_zero_and_total_is_no_severity() {
        let counts = Counts::from_aws([("CRITICAL", 0), ("MEDIUM", 9), ("TOTAL", 9)]);
        assert_eq!(counts.of(Severity::Critical), 0);
        assert_eq!(counts.of(Severity::High), 0);
        assert_eq!(counts.of(Severity::Medium), 9);
        assert_eq!(counts.to_string(), "medium 9");
        assert_eq!(Counts::default().to_string(), "no findings");
    }

    #[test]
    fn counts_over_a_threshold_block_and_say_which() {
        let p = policy(
            &[(Severity::Critical, 0), (Severity::High, 5)],
            OnMissing::Hold,
        );
        let now = datetime!(2026-12-01 10:00 UTC);
        match p.verdict(
            Some(&result(&[("CRITICAL", 2), ("HIGH", 5), ("LOW", 40)])),
            None,
            now,
        ) {
            Verdict::Block { reason, counts } => {
                assert_eq!(
                    reason,
                    "its vulnerability scan found critical 2 > 0 (this environment allows critical 0, high 5)"
                );
                assert_eq!(counts.unwrap().of(Severity::Low), 40);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            p.verdict(Some(&result(&[("HIGH", 5), ("MEDIUM", 100)])), None, now),
            Verdict::Pass(_)
        ));
    }

    #[test]
    fn without_a_result_it_waits_until_the_deadline_then_on_missing_decides() {
        let now = datetime!(2026-12-01 10:00 UTC);
        let until = Some(datetime!(2026-12-01 10:15 UTC));
        let hold = policy(&[(Severity::Critical, 0)], OnMissing::Hold);
        assert_eq!(hold.verdict(None, until, now), Verdict::Wait);
        assert_eq!(hold.verdict(None, None, now), Verdict::Wait);
        let late = datetime!(2026-12-01 10:15 UTC);
        assert!(matches!(
            hold.verdict(None, until, late),
            Verdict::Block { counts: None, reason } if reason.contains("within 900 s")
        ));
        let deploy = policy(&[(Severity::Critical, 0)], OnMissing::Deploy);
        assert!(matches!(
            deploy.verdict(None, until, late),
            Verdict::Pass(why) if why.contains("on_missing: deploy")
        ));
    }
}
