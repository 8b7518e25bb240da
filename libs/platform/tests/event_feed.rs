//! The event feed's reads and the consumer's batches, on SQLite and on PostgreSQL. The
//! consumer suite over both transports is in `consumers.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement,
    TransactionTrait,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use winback_platform::db_test;
use winback_platform::events::migration::PlatformMigrator;
use winback_platform::events::{
    Cursor, EventConsumer, EventHandler, FeedFilter, FeedReader, GrpcEventTransport, HandlerError,
    Outbox,
};
use winback_platform::grpc::CallCredentials;
use winback_platform::testing::TestDatabase;
use winback_proto::events::event::Payload;
use winback_proto::events::{Event, EventSource, PurchaseRecorded};

fn purchase(i: usize) -> Payload {
    Payload::PurchaseRecorded(PurchaseRecorded {
        customer_id: format!("c{i}"),
        order_id: format!("o{i}"),
        ..Default::default()
    })
}

/// Writes `count` events for `tenant`, `per_txn` per transaction, like a service would:
/// appended together, so a transaction's events share outbox rows.
async fn produce(
    db: &DatabaseConnection,
    outbox: &Outbox,
    tenant: &str,
    from: usize,
    count: usize,
    per_txn: usize,
) {
    let mut i = from;
    while i < from + count {
        let txn = db.begin().await.unwrap();
        let n = per_txn.min(from + count - i);
        let events = (i..i + n)
            .map(|k| (tenant.to_owned(), chrono::Utc::now(), purchase(k)))
            .collect();
        outbox.append_many(&txn, events).await.unwrap();
        i += n;
        txn.commit().await.unwrap();
        outbox.notify_committed();
    }
}

fn order_ids(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.payload {
            Some(Payload::PurchaseRecorded(p)) => p.order_id.clone(),
            other => panic!("unexpected payload {other:?}"),
        })
        .collect()
}

/// Records each event's effect, counting how many times it was applied; can simulate a
/// crash after writing the effect of the n-th call but before the commit.
struct CountingHandler {
    calls: AtomicUsize,
    crash_on_call: Option<usize>,
    crashed: CancellationToken,
}

impl EventHandler for CountingHandler {
    fn handle<'a>(
        &'a self,
        txn: &'a DatabaseTransaction,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let backend = txn.get_database_backend();
            let sql = match backend {
                DbBackend::Sqlite => {
                    "INSERT INTO effects (event_id, tenant_id, times) VALUES (?, ?, 1) ON CONFLICT (event_id) DO UPDATE SET times = effects.times + 1"
                }
                _ => {
                    "INSERT INTO effects (event_id, tenant_id, times) VALUES ($1, $2, 1) ON CONFLICT (event_id) DO UPDATE SET times = effects.times + 1"
                }
            };
            txn.execute_raw(Statement::from_sql_and_values(
                backend,
                sql,
                [
                    event.event_id.clone().into(),
                    event.tenant_id.clone().into(),
                ],
            ))
            .await?;
            if self.crash_on_call == Some(call) {
                self.crashed.cancel();
                return Err(HandlerError::Other("simulated crash before commit".into()));
            }
            Ok(())
        })
    }
}

/// The "campaigns" consumer of the profiles feed, counting effects.
fn consumer(
    db: &DatabaseConnection,
    transport: Arc<GrpcEventTransport>,
    crash_on_call: Option<usize>,
    crashed: CancellationToken,
) -> EventConsumer {
    EventConsumer::new(
        "campaigns",
        EventSource::Profiles,
        db.clone(),
        transport,
        Arc::new(CountingHandler {
            calls: AtomicUsize::new(0),
            crash_on_call,
            crashed,
        }),
    )
    .with_retry_delay(Duration::from_millis(20))
}

/// Waits until the feed serves `n` events in all.
async fn wait_until_visible(feed: &FeedReader, n: usize) {
    for _ in 0..200 {
        let all = feed
            .read_after(Cursor::default(), &FeedFilter::default(), 1000)
            .await
            .unwrap();
        if all.len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the feed never showed {n} events");
}

async fn effects(db: &DatabaseConnection) -> Vec<(String, i64)> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        "SELECT event_id, times FROM effects ORDER BY event_id",
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            r.try_get("", "event_id").unwrap(),
            r.try_get("", "times").unwrap(),
        )
    })
    .collect()
}

/// The producer's database and the consumer's, with the table the counting handler writes.
async fn producer_and_consumer(
    database: &TestDatabase,
) -> (DatabaseConnection, DatabaseConnection) {
    let producer = database.connect::<PlatformMigrator>("producer").await;
    let consumer_db = database.connect::<PlatformMigrator>("consumer").await;
    consumer_db
        .execute_unprepared("CREATE TABLE effects (event_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, times BIGINT NOT NULL)")
        .await
        .unwrap();
    (producer, consumer_db)
}

db_test!(
    a_batch_skips_the_events_handled_before_and_its_own_repeats,
    |db| async move {
        let (producer, consumer_db) = producer_and_consumer(db).await;
        let outbox = Outbox::new(EventSource::Profiles);
        produce(&producer, &outbox, "t-a", 0, 10, 10).await;
        let feed = FeedReader::new(producer.clone(), &outbox);
        wait_until_visible(&feed, 10).await;
        let events = feed
            .read_after(Cursor::default(), &FeedFilter::default(), 100)
            .await
            .unwrap();
        // Not connected: the batch is handed over directly.
        let channel = Channel::from_static("http://127.0.0.1:9").connect_lazy();
        let credentials = CallCredentials::bearer("unused").unwrap();
        let transport = Arc::new(GrpcEventTransport::new(channel, credentials, None));
        let consumer = consumer(&consumer_db, transport, None, CancellationToken::new());

        assert_eq!(consumer.handle_batch(&events[..3]).await.unwrap(), 3);
        // Three handled before, and the fifth event twice in the same batch.
        let mut batch = events.clone();
        batch.insert(5, events[4].clone());
        assert_eq!(consumer.handle_batch(&batch).await.unwrap(), 7);
        let rows = effects(&consumer_db).await;
        assert_eq!(rows.len(), 10);
        assert!(
            rows.iter().all(|(_, times)| *times == 1),
            "no event applied twice: {rows:?}"
        );
        assert_eq!(consumer.handle_batch(&events).await.unwrap(), 0);
        assert_eq!(
            consumer.cursor().await.unwrap(),
            events.last().unwrap().cursor
        );
    }
);

db_test!(
    the_feed_filters_by_tenant_and_type_and_resumes_after_a_cursor,
    |db| async move {
        let database: &TestDatabase = db;
        let producer = database.connect::<PlatformMigrator>("producer").await;
        let outbox = Outbox::new(EventSource::Offers);
        produce(&producer, &outbox, "t-a", 0, 5, 2).await;
        produce(&producer, &outbox, "t-b", 5, 5, 2).await;
        let feed = FeedReader::new(producer.clone(), &outbox);
        // On PostgreSQL the rows show once every older transaction on the server is done.
        wait_until_visible(&feed, 10).await;
        let only_b = FeedFilter {
            tenant_id: Some("t-b".into()),
            types: vec![],
        };
        let b_events = feed
            .read_after(Cursor::default(), &only_b, 100)
            .await
            .unwrap();
        assert_eq!(b_events.len(), 5);
        assert!(
            b_events
                .iter()
                .all(|e| e.tenant_id == "t-b" && e.r#type == "purchase_recorded")
        );
        let after_two: Cursor = b_events[1].cursor.parse().unwrap();
        let rest = feed.read_after(after_two, &only_b, 100).await.unwrap();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0].event_id, b_events[2].event_id);
        let none = FeedFilter {
            tenant_id: None,
            types: vec!["coupon_redeemed".into()],
        };
        assert!(
            feed.read_after(Cursor::default(), &none, 100)
                .await
                .unwrap()
                .is_empty()
        );
    }
);

db_test!(
    rows_of_many_events_serve_each_event_once_from_any_cursor,
    |db| async move {
        let database: &TestDatabase = db;
        let producer = database.connect::<PlatformMigrator>("producer").await;
        let outbox = Outbox::new(EventSource::Profiles);
        // 150 events in one transaction (rows of 64, 64 and 22), three transactions of one,
        // then 5 more together.
        produce(&producer, &outbox, "t-a", 0, 150, 150).await;
        produce(&producer, &outbox, "t-b", 150, 3, 1).await;
        produce(&producer, &outbox, "t-a", 153, 5, 5).await;
        let feed = FeedReader::new(producer.clone(), &outbox);
        wait_until_visible(&feed, 158).await;

        let rows = producer
            .query_all_raw(Statement::from_string(
                producer.get_database_backend(),
                "SELECT event_count FROM event_outbox ORDER BY seq",
            ))
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<i64>("", "event_count").unwrap())
            .collect::<Vec<_>>();
        assert_eq!(rows, vec![64, 64, 22, 1, 1, 1, 5]);

        let all = feed
            .read_after(Cursor::default(), &FeedFilter::default(), 1000)
            .await
            .unwrap();
        let expected: Vec<String> = (0..158).map(|i| format!("o{i}")).collect();
        assert_eq!(order_ids(&all), expected);
        let cursors: Vec<Cursor> = all.iter().map(|e| e.cursor.parse().unwrap()).collect();
        assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");

        // From every event's cursor, the next read starts at the event after it.
        for (i, cursor) in cursors.iter().enumerate() {
            let next = feed
                .read_after(*cursor, &FeedFilter::default(), 1)
                .await
                .unwrap();
            assert_eq!(
                order_ids(&next),
                expected[i + 1..]
                    .iter()
                    .take(1)
                    .cloned()
                    .collect::<Vec<_>>()
            );
        }
        // Pages of 7 cut rows anywhere and together are the whole feed.
        let mut paged = Vec::new();
        let mut after = Cursor::default();
        loop {
            let page = feed
                .read_after(after, &FeedFilter::default(), 7)
                .await
                .unwrap();
            assert!(page.len() <= 7);
            let Some(last) = page.last() else { break };
            after = last.cursor.parse().unwrap();
            paged.extend(page);
        }
        assert_eq!(paged, all);

        // Filters apply to whole rows, which hold one tenant and type each.
        let only_b = FeedFilter {
            tenant_id: Some("t-b".into()),
            types: vec!["purchase_recorded".into()],
        };
        let b = feed
            .read_after(Cursor::default(), &only_b, 100)
            .await
            .unwrap();
        assert_eq!(order_ids(&b), vec!["o150", "o151", "o152"]);
        let after_a = feed
            .read_after(
                cursors[100],
                &FeedFilter {
                    tenant_id: Some("t-a".into()),
                    types: vec![],
                },
                100,
            )
            .await
            .unwrap();
        assert_eq!(
            order_ids(&after_a).first().map(String::as_str),
            Some("o101")
        );
        assert_eq!(after_a.len(), 49 + 5);
    }
);

/// On PostgreSQL a transaction that took an earlier sequence number can commit after a later
/// one; the feed must hold the later event back rather than skip the earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_late_is_not_skipped_on_postgres() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let producer = database.connect::<PlatformMigrator>("producer").await;
    let outbox = Outbox::new(EventSource::Profiles);
    let feed = FeedReader::new(producer.clone(), &outbox);

    let slow = producer.begin().await.unwrap();
    outbox
        .append(&slow, "t-a", chrono::Utc::now(), purchase(1))
        .await
        .unwrap();
    let fast = producer.begin().await.unwrap();
    outbox
        .append(&fast, "t-a", chrono::Utc::now(), purchase(2))
        .await
        .unwrap();
    fast.commit().await.unwrap();

    let seen = feed
        .read_after(Cursor::default(), &FeedFilter::default(), 100)
        .await
        .unwrap();
    assert!(
        seen.is_empty(),
        "the later commit waits while an older transaction runs"
    );

    slow.commit().await.unwrap();
    // Transaction ids are cluster-wide: other work on the same server (the rest of the
    // suite) can hold the horizon back a little longer. Late, never lost.
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = feed
            .read_after(Cursor::default(), &FeedFilter::default(), 100)
            .await
            .unwrap();
        if seen.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(order_ids(&seen), vec!["o1", "o2"]);
    drop(producer);
    database.cleanup().await;
}
