//! Stored records stay readable: items exactly as an earlier release wrote them to the state
//! table (`tests/golden/*.json`, DynamoDB's JSON form, written by that release against moto)
//! are put into a fresh table, and today's code reads, updates and honours them, so an
//! upgrade needs no migration.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use pushdeploy::adapters::dynamodb::DynamoStore;
use pushdeploy::domain::approval::{Outcome, Waiting};
use pushdeploy::domain::{Deployment, DeploymentId, EnvState, Kind, Phase};
use pushdeploy::ports::{Commit, StateStore, StoreError};
use pushdeploy_tests::{TABLE, TempDir, names, provision};
use serde_json::Value;

const RECORDS: [&str; 8] = [
    include_str!("golden/environment.json"),
    include_str!("golden/deployment-gd.json"),
    include_str!("golden/deployment-bd.json"),
    include_str!("golden/deployment-rb.json"),
    include_str!("golden/target-ref-ssm.json"),
    include_str!("golden/target-ref-ecs.json"),
    include_str!("golden/target-ref-rb.json"),
    include_str!("golden/claim.json"),
];

const CLAIM: &str = "7a1d2c3e-0000-4000-8000-000000000001#web#production";

fn item(json: &str) -> HashMap<String, AttributeValue> {
    let value: serde_json::Map<String, Value> = serde_json::from_str(json).unwrap();
    value
        .into_iter()
        .map(|(k, v)| {
            let attr = match (v.get("S"), v.get("N")) {
                (Some(s), _) => AttributeValue::S(s.as_str().unwrap().to_owned()),
                (_, Some(n)) => AttributeValue::N(n.as_str().unwrap().to_owned()),
                _ => panic!("{k}: {v}"),
            };
            (k, attr)
        })
        .collect()
}

/// The stored body of a record, as JSON.
fn body(json: &str) -> Value {
    let v: Value = serde_json::from_str(json).unwrap();
    serde_json::from_str(v["body"]["S"].as_str().unwrap()).unwrap()
}

/// Every field the old record stored is read and written back unchanged.
fn assert_round_trips(stored: &Value, read: &Value) {
    for (key, value) in stored.as_object().unwrap() {
        assert_eq!(read.get(key), Some(value), "field {key:?} changed");
    }
}

async fn table() -> (pushdeploy_local::moto::Moto, TempDir, DynamoStore) {
    let dir = TempDir::new("golden").unwrap();
    let moto = pushdeploy_local::moto::Moto::start(&dir.0.join("moto.log")).unwrap();
    let sdk = moto.sdk_config().await;
    provision(&sdk).await.unwrap();
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    for record in RECORDS {
        client
            .put_item()
            .table_name(TABLE)
            .set_item(Some(item(record)))
            .send()
            .await
            .unwrap();
    }
    (moto, dir, DynamoStore::new(client, TABLE))
}

#[tokio::test]
async fn records_an_earlier_release_wrote_are_read_updated_and_honoured() {
    let (_moto, _dir, store) = table().await;
    let (app, env) = names("web", "production");

    let mut state: EnvState = store.env_state(&app, &env).await.unwrap();
    assert_eq!(state.version, 2);
    assert_eq!(
        state.holder().map(DeploymentId::as_str),
        Some("01KAB0000000000000000000RB")
    );
    assert_eq!(state.queued.as_ref().unwrap().kind, Kind::Manual);
    assert_eq!(state.frozen.as_ref().unwrap().by, "alice");
    assert_eq!(state.verified.len(), 1);
    assert_eq!(state.quarantined.len(), 1);
    let pending = state.pending.as_ref().unwrap();
    assert_eq!(pending.waiting_for, Waiting::Approval);
    assert_eq!(pending.approved.as_ref().unwrap().by, "carol");
    assert_eq!(state.decisions.len(), 6);
    assert!(matches!(
        &state.decisions[4].outcome,
        Outcome::Rejected { by, reason: Some(r) } if by == "dave" && r == "not during the sale"
    ));
    assert_round_trips(&body(RECORDS[0]), &serde_json::to_value(&state).unwrap());

    for (record, id, phase) in [
        (RECORDS[1], "01KAB0000000000000000000GD", Phase::Verified),
        (RECORDS[2], "01KAB0000000000000000000BD", Phase::RollingBack),
        (RECORDS[3], "01KAB0000000000000000000RB", Phase::RolledOut),
    ] {
        let dep: Deployment = store
            .deployment(&app, &env, &DeploymentId::parse(id).unwrap())
            .await
            .unwrap();
        assert_eq!(dep.phase, phase, "{id}");
        assert_round_trips(&body(record), &serde_json::to_value(&dep).unwrap());
    }
    let rollback = store
        .find_by_target_ref("ecs:prod/web/ecs-svc/9999")
        .await
        .unwrap()
        .expect("the old handle finds its deployment");
    assert_eq!(rollback.kind, Kind::Rollback);
    assert_eq!(
        rollback.restore.as_deref(),
        Some("arn:aws:ecs:eu-west-1:123456789012:task-definition/web:7")
    );
    assert_eq!(rollback.history.len(), 3);
    assert!(
        store
            .find_by_target_ref("ssm:0b7c5e1e-1111-4222-8333-444455556666")
            .await
            .unwrap()
            .is_some()
    );

    // The old claim still stops a repeated delivery of its event.
    let err = store
        .commit(Commit::env(&mut state).claiming(Some(CLAIM.into())))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Duplicate(_)), "{err:?}");

    // The old records take new writes at their stored versions.
    state.frozen = None;
    let mut rollback = rollback;
    rollback.reason = Some("written by the new release".into());
    store
        .commit(Commit::env(&mut state).with(&mut rollback))
        .await
        .unwrap();
    assert_eq!((state.version, rollback.version), (3, 3));
    let again = store.env_state(&app, &env).await.unwrap();
    assert!(again.frozen.is_none());
    assert_eq!(again.decisions, state.decisions);
}
