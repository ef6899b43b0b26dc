//! Whether a DynamoDB emulator applies conditional writes and transactions atomically under
//! concurrent requests, as DynamoDB does. The burst test (`tests/burst.rs`) relies on it:
//! its promises (one rollout at a time, nothing twice) rest on conditional writes that
//! concurrent writers cannot both win.
//!
//! The race: 16 clients increment one versioned item with conditional writes, while 8 write
//! new items in transactions and 8 send transactions whose condition fails, all at once, on a
//! table of 2,000 items. Atomic means: the version equals the increments that were
//! acknowledged, every acknowledged transaction's item is there, and no request errs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, KeySchemaElement, KeyType,
    Put, PutRequest, ScalarAttributeType, TransactWriteItem, WriteRequest,
};
use pushdeploy_local::moto::Moto;
use pushdeploy_tests::TempDir;

const TABLE: &str = "race";
const INCREMENTERS: usize = 16;
const WRITERS: usize = 8;
const CANCELLERS: usize = 8;
const ROUNDS: usize = 20;
const FILL: usize = 2000;

#[derive(Debug, Default)]
struct Race {
    increments_acknowledged: usize,
    final_version: usize,
    transactions_acknowledged: usize,
    transactions_lost: usize,
    failed_requests: usize,
}

impl Race {
    fn atomic(&self) -> bool {
        self.increments_acknowledged == self.final_version
            && self.transactions_lost == 0
            && self.failed_requests == 0
    }
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn key(pk: &str) -> [(String, AttributeValue); 2] {
    [("pk".into(), s(pk)), ("sk".into(), s("X"))]
}

async fn prepare(client: &Client) -> anyhow::Result<()> {
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
    };
    let schema = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
    };
    client
        .create_table()
        .table_name(TABLE)
        .attribute_definitions(attribute("pk")?)
        .attribute_definitions(attribute("sk")?)
        .key_schema(schema("pk", KeyType::Hash)?)
        .key_schema(schema("sk", KeyType::Range)?)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await?;
    // A table of some size: a whole-table copy then takes long enough to be overlapped.
    for chunk in (0..FILL).collect::<Vec<_>>().chunks(25) {
        let mut batch = client.batch_write_item();
        let writes = chunk
            .iter()
            .map(|i| {
                let mut item: std::collections::HashMap<_, _> =
                    key(&format!("FILL#{i}")).into_iter().collect();
                item.insert("body".into(), s("x".repeat(300)));
                let put = PutRequest::builder().set_item(Some(item)).build()?;
                Ok(WriteRequest::builder().put_request(put).build())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        batch = batch.request_items(TABLE, writes);
        batch.send().await?;
    }
    client
        .put_item()
        .table_name(TABLE)
        .set_item(Some(
            key("COUNTER")
                .into_iter()
                .chain([("version".to_owned(), AttributeValue::N("0".into()))])
                .collect(),
        ))
        .send()
        .await?;
    Ok(())
}

async fn race(sdk: &SdkConfig) -> anyhow::Result<Race> {
    let client = Client::new(sdk);
    prepare(&client).await?;
    let won = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..INCREMENTERS {
        let (client, won, failed) = (client.clone(), won.clone(), failed.clone());
        tasks.spawn(async move {
            for _ in 0..ROUNDS {
                let read = client
                    .get_item()
                    .table_name(TABLE)
                    .set_key(Some(key("COUNTER").into_iter().collect()))
                    .consistent_read(true)
                    .send()
                    .await;
                let Some(version) = read
                    .ok()
                    .and_then(|r| r.item()?.get("version")?.as_n().ok()?.parse::<usize>().ok())
                else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    continue;
                };
                let written = client
                    .put_item()
                    .table_name(TABLE)
                    .set_item(Some(
                        key("COUNTER")
                            .into_iter()
                            .chain([(
                                "version".to_owned(),
                                AttributeValue::N((version + 1).to_string()),
                            )])
                            .collect(),
                    ))
                    .condition_expression("version = :v")
                    .expression_attribute_values(":v", AttributeValue::N(version.to_string()))
                    .send()
                    .await;
                match written {
                    Ok(_) => {
                        won.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|e| e.is_conditional_check_failed_exception()) => {}
                    Err(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            Vec::new()
        });
    }
    for writer in 0..WRITERS {
        let (client, failed) = (client.clone(), failed.clone());
        tasks.spawn(async move {
            let mut acknowledged = Vec::new();
            for round in 0..ROUNDS {
                let pk = format!("WRITER#{writer}#{round}");
                let put = Put::builder()
                    .table_name(TABLE)
                    .set_item(Some(key(&pk).into_iter().collect()))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .expect("a complete put");
                let sent = client
                    .transact_write_items()
                    .transact_items(TransactWriteItem::builder().put(put).build())
                    .send()
                    .await;
                match sent {
                    Ok(_) => acknowledged.push(pk),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            acknowledged
        });
    }
    for _ in 0..CANCELLERS {
        let (client, failed) = (client.clone(), failed.clone());
        tasks.spawn(async move {
            for _ in 0..ROUNDS {
                let check = ConditionCheck::builder()
                    .table_name(TABLE)
                    .set_key(Some(key("ABSENT").into_iter().collect()))
                    .condition_expression("attribute_exists(pk)")
                    .build()
                    .expect("a complete condition check");
                let sent = client
                    .transact_write_items()
                    .transact_items(TransactWriteItem::builder().condition_check(check).build())
                    .send()
                    .await;
                let cancelled = sent
                    .as_ref()
                    .err()
                    .and_then(|e| e.as_service_error())
                    .is_some_and(|e| e.is_transaction_canceled_exception());
                if !cancelled {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
            Vec::new()
        });
    }
    let mut acknowledged = Vec::new();
    while let Some(done) = tasks.join_next().await {
        acknowledged.extend(done?);
    }
    let mut lost = 0;
    for pk in &acknowledged {
        let read = client
            .get_item()
            .table_name(TABLE)
            .set_key(Some(key(pk).into_iter().collect()))
            .consistent_read(true)
            .send()
            .await?;
        if read.item().is_none() {
            lost += 1;
        }
    }
    let counter = client
        .get_item()
        .table_name(TABLE)
        .set_key(Some(key("COUNTER").into_iter().collect()))
        .consistent_read(true)
        .send()
        .await?;
    let final_version = counter
        .item()
        .and_then(|i| i.get("version")?.as_n().ok()?.parse().ok())
        .unwrap_or(usize::MAX);
    Ok(Race {
        increments_acknowledged: won.load(Ordering::SeqCst),
        final_version,
        transactions_acknowledged: acknowledged.len(),
        transactions_lost: lost,
        failed_requests: failed.load(Ordering::SeqCst),
    })
}

fn report(server: &str, race: &Race) {
    println!(
        "{server}: {} conditional increments acknowledged, version {}; {} transactions \
         acknowledged, {} of them lost; {} requests failed",
        race.increments_acknowledged,
        race.final_version,
        race.transactions_acknowledged,
        race.transactions_lost,
        race.failed_requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_atomic_emulator_applies_each_conditional_write_and_transaction_alone() {
    let dir = TempDir::new("pushdeploy-race").unwrap();
    let moto = Moto::start_atomic(&dir.0.join("moto.log"), &dir.0.join("requests.log")).unwrap();
    let race = race(&moto.sdk_config().await).await.unwrap();
    report("moto behind local/moto/atomic.py", &race);
    assert!(race.atomic(), "not atomic: {race:?}");
    assert!(
        race.increments_acknowledged > 0 && race.transactions_acknowledged == WRITERS * ROUNDS,
        "the race ran: {race:?}"
    );
}

/// How the choice was made: moto's own server, raced the same way, loses acknowledged
/// transaction writes and fails requests (a thread-timing outcome, so run by hand:
/// `cargo nextest run -p pushdeploy-tests --test emulator --run-ignored only`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "shows moto_server's behaviour under concurrency; depends on thread timing"]
async fn plain_moto_server_is_not_atomic_under_concurrent_transactions() {
    let dir = TempDir::new("pushdeploy-race").unwrap();
    let moto = Moto::start(&dir.0.join("moto.log")).unwrap();
    let race = race(&moto.sdk_config().await).await.unwrap();
    report("moto_server", &race);
    assert!(!race.atomic(), "moto_server was atomic this time: {race:?}");
}
