//! The state store on one DynamoDB table (`pk`, `sk`), written with conditional writes.
//!
//! | item                  | pk                      | sk            |
//! |-----------------------|-------------------------|---------------|
//! | environment state     | `ENV#<app>#<env>`       | `STATE`       |
//! | deployment            | `ENV#<app>#<env>`       | `DEP#<ulid>`  |
//! | target handle → dep.  | `REF#<target-ref>`      | `REF`         |
//! | claimed event         | `EVENT#<id>#<app>#<env>`| `EVENT`       |
//! | undelivered event     | `ENV#<app>#<env>`       | `OUT#<ulid>`  |
//!
//! Records are stored as a JSON `body` with a numeric `version`; every write is conditional
//! on the version read, so concurrent writers cannot both win. Claimed events expire
//! through the table's TTL attribute `expires_at`. A lifecycle event is written in the
//! same transaction as the change it announces, and removed once delivered. Every
//! transaction carries its own `ClientRequestToken`, so a resent transaction that was
//! applied the first time succeeds instead of reading as a conflict.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::aws::failed;
use crate::domain::{AppName, Deployment, DeploymentId, EnvName, EnvState};
use crate::ports::{CallError, Commit, OutboxEntry, StateStore, StoreError};

/// How long a claimed event id is remembered: longer than EventBridge retries (24 h).
const CLAIM_TTL_SECONDS: i64 = 7 * 24 * 3600;

pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

fn env_pk(app: &AppName, env: &EnvName) -> String {
    format!("ENV#{app}#{env}")
}

fn dep_sk(id: &DeploymentId) -> String {
    format!("DEP#{id}")
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

type Item = HashMap<String, AttributeValue>;

fn decode<T: DeserializeOwned>(item: &Item, key: &str) -> Result<(T, u64), StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: key.to_owned(),
        message,
    };
    let body = item
        .get("body")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| corrupt("no body attribute".into()))?;
    let version = item
        .get("version")
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt("no numeric version attribute".into()))?;
    let value = serde_json::from_str(body).map_err(|e| corrupt(e.to_string()))?;
    Ok((value, version))
}

/// A versioned put: `version` is the version read (0 when the record is new).
fn versioned_put<T: Serialize>(
    table: &str,
    mut keys: Item,
    value: &T,
    version: u64,
    extra: Item,
) -> Result<Put, StoreError> {
    let body = serde_json::to_string(value)
        .map_err(|e| StoreError::Internal(format!("cannot encode {keys:?}: {e}")))?;
    keys.insert("body".into(), s(body));
    keys.insert("version".into(), n(version + 1));
    keys.extend(extra);
    let put = Put::builder().table_name(table).set_item(Some(keys));
    let put = if version == 0 {
        put.condition_expression("attribute_not_exists(pk)")
    } else {
        put.condition_expression("version = :v")
            .expression_attribute_values(":v", n(version))
    };
    put.build()
        .map_err(|e| StoreError::Internal(format!("cannot build a put: {e}")))
}

#[async_trait]
impl StateStore for DynamoStore {
    async fn env_state(&self, app: &AppName, env: &EnvName) -> Result<EnvState, StoreError> {
        let pk = env_pk(app, env);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", s("STATE"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failed(e, "GetItem"))?;
        match out.item() {
            None => Ok(EnvState::new(app.clone(), env.clone())),
            Some(item) => {
                let (mut state, version): (EnvState, u64) = decode(item, &pk)?;
                state.version = version;
                Ok(state)
            }
        }
    }

    async fn deployment(
        &self,
        app: &AppName,
        env: &EnvName,
        id: &DeploymentId,
    ) -> Result<Deployment, StoreError> {
        let pk = env_pk(app, env);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", s(dep_sk(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failed(e, "GetItem"))?;
        let item = out
            .item()
            .ok_or_else(|| StoreError::NotFound(format!("deployment {id} of {app}/{env}")))?;
        let (mut dep, version): (Deployment, u64) = decode(item, &format!("{pk}/{id}"))?;
        dep.version = version;
        Ok(dep)
    }

    async fn find_by_target_ref(&self, target_ref: &str) -> Result<Option<Deployment>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("REF#{target_ref}")))
            .key("sk", s("REF"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failed(e, "GetItem"))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let field = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default()
        };
        let corrupt = |message: String| StoreError::Corrupt {
            key: format!("REF#{target_ref}"),
            message,
        };
        let app = AppName::parse(&field("app")).map_err(|e| corrupt(e.to_string()))?;
        let env = EnvName::parse(&field("environment")).map_err(|e| corrupt(e.to_string()))?;
        let id =
            DeploymentId::parse(&field("deployment_id")).map_err(|e| corrupt(e.to_string()))?;
        self.deployment(&app, &env, &id).await.map(Some)
    }

    async fn recent_deployments(
        &self,
        app: &AppName,
        env: &EnvName,
        limit: usize,
    ) -> Result<Vec<Deployment>, StoreError> {
        let pk = env_pk(app, env);
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :dep)")
            .expression_attribute_values(":pk", s(&pk))
            .expression_attribute_values(":dep", s("DEP#"))
            .scan_index_forward(false)
            .limit(limit.clamp(1, 100) as i32)
            .send()
            .await
            .map_err(|e| failed(e, "Query"))?;
        out.items()
            .iter()
            .map(|item| {
                let (mut dep, version): (Deployment, u64) = decode(item, &pk)?;
                dep.version = version;
                Ok(dep)
            })
            .collect()
    }

    async fn undelivered(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let pk = env_pk(app, env);
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :out)")
            .expression_attribute_values(":pk", s(&pk))
            .expression_attribute_values(":out", s(OUTBOX))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failed(e, "Query"))?;
        out.items()
            .iter()
            .map(|item| decode(item, &pk).map(|(entry, _): (OutboxEntry, u64)| entry))
            .collect()
    }

    async fn delivered(
        &self,
        app: &AppName,
        env: &EnvName,
        ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let pk = env_pk(app, env);
        let mut removed = Vec::new();
        for id in ids {
            if self.remove_delivered(&pk, id).await? {
                removed.push(id.clone());
            }
        }
        Ok(removed)
    }

    async fn commit(&self, commit: Commit<'_>) -> Result<(), StoreError> {
        let mut writes: Vec<TransactWriteItem> = Vec::new();
        let mut what: Vec<String> = Vec::new();
        if let Some(env) = &commit.env {
            let keys = Item::from([
                ("pk".into(), s(env_pk(&env.app, &env.environment))),
                ("sk".into(), s("STATE")),
            ]);
            let extra = Item::from([("kind".into(), s("environment"))]);
            writes.push(
                TransactWriteItem::builder()
                    .put(versioned_put(
                        &self.table,
                        keys,
                        &**env,
                        env.version,
                        extra,
                    )?)
                    .build(),
            );
            what.push(format!("environment {}/{}", env.app, env.environment));
        }
        for dep in &commit.deployments {
            let keys = Item::from([
                ("pk".into(), s(env_pk(&dep.app, &dep.environment))),
                ("sk".into(), s(dep_sk(&dep.id))),
            ]);
            let extra = Item::from([
                ("kind".into(), s("deployment")),
                ("phase".into(), s(format!("{:?}", dep.phase))),
                ("digest".into(), s(dep.image.digest.as_str())),
            ]);
            writes.push(
                TransactWriteItem::builder()
                    .put(versioned_put(
                        &self.table,
                        keys,
                        &**dep,
                        dep.version,
                        extra,
                    )?)
                    .build(),
            );
            what.push(format!("deployment {}", dep.id));
            if commit.link_target_refs
                && let Some(target_ref) = &dep.target_ref
            {
                let item = Item::from([
                    ("pk".into(), s(format!("REF#{target_ref}"))),
                    ("sk".into(), s("REF")),
                    ("app".into(), s(dep.app.as_str())),
                    ("environment".into(), s(dep.environment.as_str())),
                    ("deployment_id".into(), s(dep.id.as_str())),
                ]);
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .build()
                    .map_err(|e| StoreError::Internal(format!("cannot build a put: {e}")))?;
                writes.push(TransactWriteItem::builder().put(put).build());
                what.push(format!("handle {target_ref}"));
            }
        }
        let mut claim_index = None;
        if let Some(claim) = &commit.claim_event {
            let expires = time::OffsetDateTime::now_utc().unix_timestamp() + CLAIM_TTL_SECONDS;
            let mut item = Item::from([
                ("pk".into(), s(format!("EVENT#{claim}"))),
                ("sk".into(), s("EVENT")),
                ("expires_at".into(), n(expires)),
            ]);
            let put = Put::builder()
                .table_name(&self.table)
                .return_values_on_condition_check_failure(
                    aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld,
                );
            let put = match commit.claim_lease {
                // A claim held for a while may be taken once its time is past.
                Some(lease) => {
                    item.insert("until".into(), n(lease.until.unix_timestamp()));
                    put.condition_expression(
                        "attribute_not_exists(pk) OR (attribute_exists(#u) AND #u < :now)",
                    )
                    .expression_attribute_names("#u", "until")
                    .expression_attribute_values(":now", n(lease.now.unix_timestamp()))
                }
                None => put.condition_expression("attribute_not_exists(pk)"),
            };
            let put = put
                .set_item(Some(item))
                .build()
                .map_err(|e| StoreError::Internal(format!("cannot build a claim: {e}")))?;
            writes.push(TransactWriteItem::builder().put(put).build());
            what.push(format!("event {claim}"));
            claim_index = Some(writes.len() - 1);
        }
        if let Some(settle) = &commit.settle_event {
            let update = aws_sdk_dynamodb::types::Update::builder()
                .table_name(&self.table)
                .key("pk", s(format!("EVENT#{settle}")))
                .key("sk", s("EVENT"))
                .update_expression("REMOVE #u")
                .expression_attribute_names("#u", "until")
                .build()
                .map_err(|e| StoreError::Internal(format!("cannot build a settle: {e}")))?;
            writes.push(TransactWriteItem::builder().update(update).build());
            what.push(format!("settle event {settle}"));
        }
        if let Some(forget) = &commit.forget_event {
            let delete = Delete::builder()
                .table_name(&self.table)
                .key("pk", s(format!("EVENT#{forget}")))
                .key("sk", s("EVENT"))
                .build()
                .map_err(|e| StoreError::Internal(format!("cannot build a delete: {e}")))?;
            writes.push(TransactWriteItem::builder().delete(delete).build());
            what.push(format!("forget event {forget}"));
        }
        for entry in &commit.outbox {
            let keys = Item::from([
                (
                    "pk".into(),
                    s(env_pk(&entry.detail.app, &entry.detail.environment)),
                ),
                ("sk".into(), s(format!("{OUTBOX}{}", entry.id))),
            ]);
            let extra = Item::from([("kind".into(), s("event"))]);
            let put = versioned_put(&self.table, keys, entry, 0, extra)?;
            writes.push(TransactWriteItem::builder().put(put).build());
            what.push(format!("event {} {}", entry.detail_type, entry.id));
        }
        if writes.is_empty() {
            return Ok(());
        }
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(writes))
            .client_request_token(ulid::Ulid::new().to_string())
            .send()
            .await;
        match result {
            Ok(_) => {
                if let Some(env) = commit.env {
                    env.version += 1;
                }
                for dep in commit.deployments {
                    dep.version += 1;
                }
                Ok(())
            }
            Err(error) => Err(transaction_error(
                error,
                claim_index,
                commit.claim_event.as_deref(),
                &what,
            )),
        }
    }
}

/// Where an environment's undelivered events sort: after its deployments.
const OUTBOX: &str = "OUT#";

impl DynamoStore {
    /// Removes one delivered event, if it is still there; whether this call removed it.
    async fn remove_delivered(&self, pk: &str, id: &str) -> Result<bool, StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(format!("{OUTBOX}{id}")))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(failed(e, "DeleteItem")),
        }
    }
}

/// Which write of a cancelled transaction failed its condition decides the error: the
/// event claim means a repeated delivery; any other means a concurrent writer.
fn transaction_error(
    error: SdkError<TransactWriteItemsError, aws_smithy_runtime_api::http::Response>,
    claim_index: Option<usize>,
    claim: Option<&str>,
    what: &[String],
) -> StoreError {
    if let SdkError::ServiceError(context) = &error {
        match context.err() {
            TransactWriteItemsError::TransactionCanceledException(cancelled) => {
                let failed: Vec<usize> = cancelled
                    .cancellation_reasons()
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.code() == Some("ConditionalCheckFailed"))
                    .map(|(i, _)| i)
                    .collect();
                if let (Some(i), Some(claim)) = (claim_index, claim)
                    && failed.contains(&i)
                {
                    // A claim still held for a while is being handled; one without an end
                    // was handled.
                    let held = cancelled
                        .cancellation_reasons()
                        .get(i)
                        .and_then(|r| r.item())
                        .is_some_and(|item| item.contains_key("until"));
                    return if held {
                        StoreError::Held(claim.to_owned())
                    } else {
                        StoreError::Duplicate(claim.to_owned())
                    };
                }
                if !failed.is_empty() {
                    let names: Vec<&str> = failed
                        .iter()
                        .filter_map(|i| what.get(*i))
                        .map(String::as_str)
                        .collect();
                    return StoreError::Conflict(names.join(", "));
                }
                let conflicting = cancelled
                    .cancellation_reasons()
                    .iter()
                    .any(|r| matches!(r.code(), Some("TransactionConflict")));
                if conflicting {
                    return StoreError::Conflict(what.join(", "));
                }
                // An item over its table's capacity cancels the whole transaction: it is
                // throttling, and passes.
                let throttled = cancelled.cancellation_reasons().iter().find(|r| {
                    matches!(
                        r.code(),
                        Some("ThrottlingError" | "ProvisionedThroughputExceeded")
                    )
                });
                if let Some(reason) = throttled {
                    let said = format!(
                        "TransactionCanceledException: {}{}",
                        reason.code().unwrap_or_default(),
                        reason
                            .message()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    );
                    return StoreError::Throttled(CallError::new(
                        "TransactWriteItems",
                        said,
                        Box::new(error),
                    ));
                }
            }
            TransactWriteItemsError::TransactionInProgressException(_) => {
                return StoreError::Conflict(what.join(", "));
            }
            _ => {}
        }
    }
    failed(error, "TransactWriteItems")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::operation::get_item::{GetItemError, GetItemOutput};
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsOutput;
    use aws_sdk_dynamodb::types::CancellationReason;
    use aws_sdk_dynamodb::types::error::{
        ProvisionedThroughputExceededException, TransactionCanceledException,
    };
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_types::error::ErrorMetadata;
    use time::macros::datetime;

    use crate::domain::{Kind, PinnedImage, Request};

    fn app() -> AppName {
        AppName::parse("web").unwrap()
    }

    fn env() -> EnvName {
        EnvName::parse("staging").unwrap()
    }

    fn deployment() -> Deployment {
        let image =
            PinnedImage::parse(&format!("localhost:5000/web@sha256:{}", "ab".repeat(32))).unwrap();
        let request = Request {
            image,
            tag: None,
            kind: Kind::Push,
            pushed_at: datetime!(2026-01-01 0:00 UTC),
            requested_by: None,
            reason: None,
        };
        Deployment::new(app(), env(), request, datetime!(2026-01-01 0:00 UTC))
    }

    fn cancelled(codes: &[&str]) -> TransactWriteItemsError {
        let mut e = TransactionCanceledException::builder().message("cancelled");
        for code in codes {
            e = e.cancellation_reasons(CancellationReason::builder().code(*code).build());
        }
        TransactWriteItemsError::TransactionCanceledException(e.build())
    }

    #[tokio::test]
    async fn a_claimed_event_failing_its_condition_is_a_duplicate() {
        let rule = mock!(Client::transact_write_items)
            .then_error(|| cancelled(&["None", "None", "ConditionalCheckFailed"]));
        let store = DynamoStore::new(mock_client!(aws_sdk_dynamodb, [&rule]), "t");
        let mut state = EnvState::new(app(), env());
        let mut dep = deployment();
        let err = store
            .commit(
                Commit::env(&mut state)
                    .with(&mut dep)
                    .claiming(Some("evt-1#web#staging".into())),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Duplicate(ref c) if c == "evt-1#web#staging"),
            "{err:?}"
        );
        assert_eq!(state.version, 0, "a failed commit leaves versions alone");
    }

    /// What committing an environment and a deployment answers when the transaction is
    /// cancelled for these reasons.
    async fn cancelled_commit(codes: &'static [&'static str]) -> StoreError {
        let rule = mock!(Client::transact_write_items).then_error(move || cancelled(codes));
        let store = DynamoStore::new(mock_client!(aws_sdk_dynamodb, [&rule]), "t");
        let mut state = EnvState::new(app(), env());
        let mut dep = deployment();
        store
            .commit(Commit::env(&mut state).with(&mut dep))
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn a_stale_version_is_a_conflict_naming_the_record() {
        let err = cancelled_commit(&["ConditionalCheckFailed", "None"]).await;
        assert!(
            matches!(err, StoreError::Conflict(ref what) if what == "environment web/staging"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_transaction_cancelled_by_throttling_is_retryable_throttling_not_a_conflict() {
        for (code, reasons) in [
            ("ThrottlingError", &["None", "ThrottlingError"]),
            (
                "ProvisionedThroughputExceeded",
                &["None", "ProvisionedThroughputExceeded"],
            ),
        ] {
            let err = cancelled_commit(reasons).await;
            assert!(matches!(err, StoreError::Throttled(_)), "{code}: {err:?}");
            let service = crate::services::ServiceError::Store(err);
            assert_eq!(service.error_type(), "Retryable", "{code}");
            assert!(service.chain().contains(code), "{}", service.chain());
        }
    }

    #[tokio::test]
    async fn a_successful_commit_advances_versions() {
        let rule = mock!(Client::transact_write_items)
            .then_output(|| TransactWriteItemsOutput::builder().build());
        let store = DynamoStore::new(mock_client!(aws_sdk_dynamodb, [&rule]), "t");
        let mut state = EnvState::new(app(), env());
        let mut dep = deployment();
        store
            .commit(Commit::env(&mut state).with(&mut dep))
            .await
            .unwrap();
        assert_eq!((state.version, dep.version), (1, 1));
    }

    #[tokio::test]
    async fn throttling_is_reported_as_retryable_throttling() {
        let rule = mock!(Client::get_item).then_error(|| {
            GetItemError::ProvisionedThroughputExceededException(
                ProvisionedThroughputExceededException::builder()
                    .message("slow down")
                    .meta(
                        ErrorMetadata::builder()
                            .code("ProvisionedThroughputExceededException")
                            .build(),
                    )
                    .build(),
            )
        });
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&rule], |c| c
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled()));
        let store = DynamoStore::new(client, "t");
        let err = store.env_state(&app(), &env()).await.unwrap_err();
        assert!(matches!(err, StoreError::Throttled(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_missing_environment_reads_as_empty_state_and_a_missing_deployment_as_not_found() {
        let rule = mock!(Client::get_item).then_output(|| GetItemOutput::builder().build());
        let store = DynamoStore::new(
            mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&rule]),
            "t",
        );
        let state = store.env_state(&app(), &env()).await.unwrap();
        assert_eq!((state.version, state.lease), (0, None));
        let err = store
            .deployment(&app(), &env(), &deployment().id)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    }

    #[tokio::test]
    async fn an_unreadable_record_is_reported_not_guessed() {
        let rule = mock!(Client::get_item).then_output(|| {
            GetItemOutput::builder()
                .item("body", AttributeValue::S("{not json".into()))
                .item("version", AttributeValue::N("3".into()))
                .build()
        });
        let store = DynamoStore::new(mock_client!(aws_sdk_dynamodb, [&rule]), "t");
        let err = store.env_state(&app(), &env()).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    }
}
