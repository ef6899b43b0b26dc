//! Which images of a repository the janitor may delete: a pure function of the images, the
//! retention rule and the digests pushdeploy still needs.
//!
//! An image is kept when any of these holds, and deleted otherwise:
//! - it is among the newest `keep_newest` top-level images by push time;
//! - one of its tags matches a protected pattern;
//! - a digest in use names it (current, recently verified, in flight, queued…);
//! - it is a child (a per-platform manifest) of an image index that is kept.
//!
//! Top-level images are those no other image in the repository lists as a child: the
//! per-platform manifests of a multi-platform push follow their index instead of taking
//! places among the newest.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use time::OffsetDateTime;

use super::image::{Digest, Tag};
use super::policy::TagPattern;

/// One image as the registry lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredImage {
    pub digest: Digest,
    pub tags: Vec<Tag>,
    pub pushed_at: OffsetDateTime,
    /// The manifests an image index lists; empty for a single-platform image.
    pub children: Vec<Digest>,
}

/// How many images to keep and which tags never to delete.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionRule {
    pub keep_newest: usize,
    pub protect_tags: Vec<TagPattern>,
}

/// Why an image is kept; the first reason found is reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Keep {
    Newest { rank: usize },
    ProtectedTag { tag: String, pattern: String },
    InUse { by: String },
    ChildOf { index: Digest },
}

/// The decision for a whole repository.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Digests to delete, oldest push first.
    pub delete: Vec<Digest>,
    pub keep: BTreeMap<Digest, Keep>,
}

/// Decides what to delete. `in_use` maps a digest to why pushdeploy needs it; those are
/// never selected, whatever else holds.
pub fn plan(
    images: &[StoredImage],
    rule: &RetentionRule,
    in_use: &BTreeMap<Digest, String>,
) -> Plan {
    let children: BTreeSet<&Digest> = images.iter().flat_map(|i| i.children.iter()).collect();
    let mut ordered: Vec<&StoredImage> = images.iter().collect();
    // Newest first; the digest breaks ties so that the plan never depends on list order.
    ordered.sort_by(|a, b| {
        b.pushed_at
            .cmp(&a.pushed_at)
            .then_with(|| a.digest.as_str().cmp(b.digest.as_str()))
    });

    let mut keep: BTreeMap<Digest, Keep> = BTreeMap::new();
    let mut rank = 0;
    for image in &ordered {
        let top_level = !children.contains(&image.digest);
        if let Some(by) = in_use.get(&image.digest) {
            keep.insert(image.digest.clone(), Keep::InUse { by: by.clone() });
        } else if let Some((tag, pattern)) = protected_tag(image, &rule.protect_tags) {
            keep.insert(
                image.digest.clone(),
                Keep::ProtectedTag {
                    tag: tag.to_string(),
                    pattern: pattern.to_string(),
                },
            );
        } else if top_level && rank < rule.keep_newest {
            keep.insert(image.digest.clone(), Keep::Newest { rank: rank + 1 });
        }
        if top_level {
            rank += 1;
        }
    }

    // A kept index keeps its manifests, and so on down (indexes may nest).
    let by_digest: BTreeMap<&Digest, &StoredImage> =
        images.iter().map(|i| (&i.digest, i)).collect();
    let mut pending: Vec<Digest> = keep.keys().cloned().collect();
    while let Some(parent) = pending.pop() {
        let Some(image) = by_digest.get(&parent) else {
            continue;
        };
        for child in &image.children {
            if !keep.contains_key(child) && by_digest.contains_key(child) {
                keep.insert(
                    child.clone(),
                    Keep::ChildOf {
                        index: parent.clone(),
                    },
                );
                pending.push(child.clone());
            }
        }
    }

    // Oldest push first, the digest breaking ties.
    let mut doomed: Vec<&StoredImage> = ordered
        .into_iter()
        .filter(|i| !keep.contains_key(&i.digest))
        .collect();
    doomed.sort_by(|a, b| {
        a.pushed_at
            .cmp(&b.pushed_at)
            .then_with(|| a.digest.as_str().cmp(b.digest.as_str()))
    });
    let mut delete: Vec<Digest> = doomed.into_iter().map(|i| i.digest.clone()).collect();
    delete.dedup();
    Plan { delete, keep }
}

fn protected_tag<'a>(
    image: &'a StoredImage,
    patterns: &'a [TagPattern],
) -> Option<(&'a Tag, &'a TagPattern)> {
    image
        .tags
        .iter()
        .find_map(|t| patterns.iter().find(|p| p.matches(t)).map(|p| (t, p)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::Duration;
    use time::macros::datetime;

    fn digest(n: u16) -> Digest {
        Digest::parse(&format!("sha256:{n:064x}")).unwrap()
    }

    fn image(n: u16, minutes: i64, tags: &[&str]) -> StoredImage {
        StoredImage {
            digest: digest(n),
            tags: tags.iter().map(|t| Tag::parse(t).unwrap()).collect(),
            pushed_at: datetime!(2026-01-01 00:00 UTC) + Duration::minutes(minutes),
            children: Vec::new(),
        }
    }

    fn rule(keep_newest: usize, protect: &[&str]) -> RetentionRule {
        RetentionRule {
            keep_newest,
            protect_tags: protect
                .iter()
                .map(|p| TagPattern::parse(p).unwrap())
                .collect(),
        }
    }

    #[test]
    fn keeps_the_newest_and_deletes_the_rest_oldest_first() {
        let images = vec![image(1, 1, &["a"]), image(3, 3, &["c"]), image(2, 2, &[])];
        let plan = plan(&images, &rule(1, &[]), &BTreeMap::new());
        assert_eq!(plan.delete, vec![digest(1), digest(2)]);
        assert_eq!(plan.keep[&digest(3)], Keep::Newest { rank: 1 });
    }

    #[test]
    fn protected_tags_and_digests_in_use_are_kept_whatever_their_age() {
        let images = vec![
            image(1, 1, &["v1.0.0"]),
            image(2, 2, &["main-1"]),
            image(3, 3, &["main-2"]),
        ];
        let in_use = BTreeMap::from([(digest(2), "current in web/production".to_owned())]);
        let plan = plan(&images, &rule(0, &["v*"]), &in_use);
        assert_eq!(plan.delete, vec![digest(3)]);
        assert_eq!(
            plan.keep[&digest(1)],
            Keep::ProtectedTag {
                tag: "v1.0.0".into(),
                pattern: "v*".into()
            }
        );
        assert_eq!(
            plan.keep[&digest(2)],
            Keep::InUse {
                by: "current in web/production".into()
            }
        );
    }

    #[test]
    fn the_manifests_of_a_kept_index_stay_and_do_not_take_places_among_the_newest() {
        let mut index = image(10, 10, &["v2"]);
        index.children = vec![digest(11), digest(12)];
        let mut old_index = image(20, 1, &["v1"]);
        old_index.children = vec![digest(21)];
        let images = vec![
            index,
            image(11, 10, &[]),
            image(12, 10, &[]),
            old_index,
            image(21, 1, &[]),
            image(5, 5, &["main-5"]),
        ];
        let plan = plan(&images, &rule(1, &[]), &BTreeMap::new());
        assert_eq!(plan.delete, vec![digest(20), digest(21), digest(5)]);
        assert_eq!(plan.keep[&digest(11)], Keep::ChildOf { index: digest(10) });
    }

    fn arb_images() -> impl Strategy<Value = Vec<StoredImage>> {
        let tag = prop_oneof![
            Just("v1"),
            Just("v2.1"),
            Just("main-3"),
            Just("latest"),
            Just("pr-7")
        ];
        proptest::collection::vec(
            (
                0u16..64,
                0i64..1000,
                proptest::collection::vec(tag, 0..3),
                proptest::collection::vec(0u16..64, 0..3),
            ),
            0..40,
        )
        .prop_map(|raw| {
            let mut seen = BTreeSet::new();
            raw.into_iter()
                .filter(|(n, ..)| seen.insert(*n))
                .map(|(n, minutes, tags, children)| {
                    let mut i = image(n, minutes, &tags);
                    i.tags.dedup();
                    i.children = children
                        .into_iter()
                        .filter(|c| *c != n)
                        .map(digest)
                        .collect();
                    i
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn a_protected_digest_is_never_selected(
            images in arb_images(),
            keep_newest in 0usize..10,
            in_use in proptest::collection::btree_set(0u16..64, 0..10),
            protect in proptest::collection::vec(prop_oneof![Just("v*"), Just("latest"), Just("main-?")], 0..3),
        ) {
            let in_use: BTreeMap<Digest, String> =
                in_use.into_iter().map(|n| (digest(n), "in use".to_owned())).collect();
            let rule = rule(keep_newest, &protect);
            let plan = plan(&images, &rule, &in_use);
            let deleted: BTreeSet<&Digest> = plan.delete.iter().collect();
            prop_assert_eq!(deleted.len(), plan.delete.len(), "a digest is deleted twice");
            for image in &images {
                let is_deleted = deleted.contains(&image.digest);
                // Every image is either kept or deleted, never both.
                prop_assert_ne!(is_deleted, plan.keep.contains_key(&image.digest));
                if in_use.contains_key(&image.digest) {
                    prop_assert!(!is_deleted, "in-use digest selected");
                }
                if image.tags.iter().any(|t| rule.protect_tags.iter().any(|p| p.matches(t))) {
                    prop_assert!(!is_deleted, "protected tag selected");
                }
                if !is_deleted {
                    for child in &image.children {
                        prop_assert!(!deleted.contains(child), "child of a kept index selected");
                    }
                }
            }
            // The newest top-level images are kept.
            let children: BTreeSet<&Digest> = images.iter().flat_map(|i| i.children.iter()).collect();
            let mut top: Vec<&StoredImage> = images.iter().filter(|i| !children.contains(&i.digest)).collect();
            top.sort_by(|a, b| b.pushed_at.cmp(&a.pushed_at).then_with(|| a.digest.as_str().cmp(b.digest.as_str())));
            for image in top.iter().take(keep_newest) {
                prop_assert!(!deleted.contains(&image.digest), "one of the newest selected");
            }
            // Only listed images are ever selected.
            let listed: BTreeSet<&Digest> = images.iter().map(|i| &i.digest).collect();
            prop_assert!(deleted.iter().all(|d| listed.contains(d)));
        }
    }
}
