//! The consumer suite: the same tests for both event transports — the gRPC feed and NATS
//! JetStream — on SQLite and on PostgreSQL. Whatever carries the events, a consumer loses
//! none, applies none twice, keeps their order, and survives a crash, a restart and a
//! replica that dies holding events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement,
    TransactionTrait,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use winback_platform::config::ServerConfig;
use winback_platform::events::migration::PlatformMigrator;
use winback_platform::events::{
    EventConsumer, EventHandler, EventTransport, EventsGrpc, FeedReader, GrpcEventTransport,
    HandlerError, JetStream, Outbox,
};
use winback_platform::grpc::{CallCredentials, GrpcServer};
use winback_platform::testing::{TestDatabase, test_keys};
use winback_proto::events::event::Payload;
use winback_proto::events::events_service_server::EventsServiceServer;
use winback_proto::events::{Event, EventSource, PurchaseRecorded};

/// Which transport a run of the suite uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Feed,
    JetStream,
}

/// Declares a suite test four times: `name::{sqlite,postgres}_{feed,jetstream}`.
macro_rules! consumer_test {
    ($name:ident, |$db:ident, $kind:ident| $body:expr) => {
        mod $name {
            use super::*;

            async fn run(database: TestDatabase, $kind: Kind) {
                {
                    let $db = &database;
                    $body.await;
                }
                database.cleanup().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_feed() {
                run(TestDatabase::sqlite().await, Kind::Feed).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_jetstream() {
                run(TestDatabase::sqlite().await, Kind::JetStream).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_feed() {
                if let Some(database) = TestDatabase::postgres().await {
                    run(database, Kind::Feed).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_jetstream() {
                if let Some(database) = TestDatabase::postgres().await {
                    run(database, Kind::JetStream).await;
                }
            }
        }
    };
}

fn purchase(i: usize) -> Payload {
    Payload::PurchaseRecorded(PurchaseRecorded {
        customer_id: format!("c{i}"),
        order_id: format!("o{i:04}"),
        ..Default::default()
    })
}

/// Writes events `from..from + count` for `tenant`, `per_txn` per transaction, as a
/// service does: appended in the transaction of the change, then the commit signalled.
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

/// What carries the events from the producer's outbox to consumers.
struct Carrier {
    transport: Arc<dyn EventTransport>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    jetstream: Option<JetStream>,
}

impl Carrier {
    /// The feed server (batches of 7, to cut transactions) or a relay to JetStream under a
    /// prefix of the test's own. `None` when JetStream is not running outside CI.
    async fn start(kind: Kind, producer: &DatabaseConnection, outbox: &Outbox) -> Option<Self> {
        let stop = CancellationToken::new();
        let feed = FeedReader::new(producer.clone(), outbox);
        match kind {
            Kind::Feed => {
                let (signer, verifier) = test_keys();
                let mut server = GrpcServer::new(&ServerConfig::default(), verifier);
                let events = EventsGrpc::new(
                    [(outbox.source(), feed)],
                    Duration::from_millis(50),
                    7,
                    stop.clone(),
                );
                server.add_service(EventsServiceServer::new(events)).await;
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let until = stop.clone();
                let task = tokio::spawn(async move {
                    server
                        .serve(listener, async move { until.cancelled().await })
                        .await
                        .unwrap();
                });
                let channel = Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect_lazy();
                let credentials =
                    CallCredentials::bearer(&signer.service_token("campaigns", 300).unwrap())
                        .unwrap();
                Some(Self {
                    transport: Arc::new(GrpcEventTransport::new(channel, credentials, None)),
                    stop,
                    tasks: vec![task],
                    jetstream: None,
                })
            }
            Kind::JetStream => {
                let config = winback_platform::testing::jetstream().await?;
                let jetstream = JetStream::connect(&config).await.unwrap();
                let relay = tokio::spawn(jetstream.clone().relay(
                    feed,
                    outbox.source(),
                    7,
                    Duration::from_millis(50),
                    stop.clone(),
                ));
                Some(Self {
                    transport: Arc::new(jetstream.transport("campaigns")),
                    stop,
                    tasks: vec![relay],
                    jetstream: Some(jetstream),
                })
            }
        }
    }

    async fn shutdown(self) {
        self.stop.cancel();
        for task in self.tasks {
            task.await.unwrap();
        }
        if let Some(jetstream) = self.jetstream {
            jetstream.delete_streams().await.unwrap();
        }
    }
}

/// Records each event's effect and the order effects were applied in; can fail (a crash
/// after writing the effect, before the commit) or hang (a replica that stops answering)
/// on its n-th call.
struct Recorder {
    calls: AtomicUsize,
    crash_on_call: Option<usize>,
    hang_on_call: Option<usize>,
    crashed: CancellationToken,
}

impl Recorder {
    fn new() -> Self {
        Self {
            calls: AtomicUsize::new(0),
            crash_on_call: None,
            hang_on_call: None,
            crashed: CancellationToken::new(),
        }
    }
}

impl EventHandler for Recorder {
    fn handle<'a>(
        &'a self,
        txn: &'a DatabaseTransaction,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let order_id = match &event.payload {
                Some(Payload::PurchaseRecorded(p)) => p.order_id.clone(),
                other => panic!("unexpected payload {other:?}"),
            };
            let backend = txn.get_database_backend();
            let sql = match backend {
                DbBackend::Sqlite => {
                    "INSERT INTO effects (order_id, times, applied) VALUES (?, 1, (SELECT COALESCE(MAX(applied), 0) + 1 FROM effects)) ON CONFLICT (order_id) DO UPDATE SET times = effects.times + 1"
                }
                _ => {
                    "INSERT INTO effects (order_id, times, applied) VALUES ($1, 1, (SELECT COALESCE(MAX(applied), 0) + 1 FROM effects)) ON CONFLICT (order_id) DO UPDATE SET times = effects.times + 1"
                }
            };
            txn.execute_raw(Statement::from_sql_and_values(
                backend,
                sql,
                [order_id.into()],
            ))
            .await?;
            if self.hang_on_call == Some(call) {
                std::future::pending::<()>().await;
            }
            if self.crash_on_call == Some(call) {
                self.crashed.cancel();
                return Err(HandlerError::Other("simulated crash before commit".into()));
            }
            Ok(())
        })
    }
}

/// The "campaigns" consumer of the profiles events.
fn consumer(
    db: &DatabaseConnection,
    transport: &Arc<dyn EventTransport>,
    handler: Recorder,
) -> EventConsumer {
    EventConsumer::new(
        "campaigns",
        EventSource::Profiles,
        db.clone(),
        transport.clone(),
        Arc::new(handler),
    )
    .with_retry_delay(Duration::from_millis(20))
}

/// The effects as (order id, times applied), in the order they were applied.
async fn effects(db: &DatabaseConnection) -> Vec<(String, i64)> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        "SELECT order_id, times FROM effects ORDER BY applied",
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            r.try_get("", "order_id").unwrap(),
            r.try_get("", "times").unwrap(),
        )
    })
    .collect()
}

async fn wait_for_effects(db: &DatabaseConnection, n: usize) -> Vec<(String, i64)> {
    for _ in 0..600 {
        let rows = effects(db).await;
        if rows.len() >= n {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("only {} of {n} effects after 30 s", effects(db).await.len());
}

/// Every event `0..n` applied exactly once, in the order produced.
fn assert_once_in_order(rows: &[(String, i64)], n: usize) {
    let expected: Vec<String> = (0..n).map(|i| format!("o{i:04}")).collect();
    let applied: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(applied, expected, "every event once, in order");
    assert!(
        rows.iter().all(|(_, times)| *times == 1),
        "no event applied twice: {rows:?}"
    );
}

/// The producer's database and the consumer's, with the table the recorder writes.
async fn databases(database: &TestDatabase) -> (DatabaseConnection, DatabaseConnection) {
    let producer = database.connect::<PlatformMigrator>("producer").await;
    let consumer_db = database.connect::<PlatformMigrator>("consumer").await;
    consumer_db
        .execute_unprepared(
            "CREATE TABLE effects (order_id TEXT PRIMARY KEY, times BIGINT NOT NULL, applied BIGINT NOT NULL)",
        )
        .await
        .unwrap();
    (producer, consumer_db)
}

consumer_test!(
    a_consumer_that_crashes_and_restarts_neither_loses_nor_repeats_an_event,
    |db, kind| async move {
        let (producer, consumer_db) = databases(db).await;
        let outbox = Outbox::new(EventSource::Profiles);
        let Some(carrier) = Carrier::start(kind, &producer, &outbox).await else {
            return;
        };
        // Two tenants, events in multi-event transactions; batches of 7 cut them.
        produce(&producer, &outbox, "t-a", 0, 30, 4).await;
        produce(&producer, &outbox, "t-b", 30, 30, 5).await;

        // The first consumer dies on its 26th call after writing the effect, before the
        // commit: the effect is rolled back with its batch.
        let mut crashing = Recorder::new();
        crashing.crash_on_call = Some(26);
        let crashed = crashing.crashed.clone();
        let first = consumer(&consumer_db, &carrier.transport, crashing);
        tokio::time::timeout(Duration::from_secs(30), first.run(crashed))
            .await
            .expect("the first consumer stops after its crash");
        assert!(effects(&consumer_db).await.len() <= 25);

        // The second, same name and database, resumes; more events arrive while it runs.
        let stop = CancellationToken::new();
        let second = consumer(&consumer_db, &carrier.transport, Recorder::new());
        let task = tokio::spawn(second.run(stop.clone()));
        produce(&producer, &outbox, "t-a", 60, 10, 3).await;
        let rows = wait_for_effects(&consumer_db, 70).await;
        stop.cancel();
        task.await.unwrap();
        assert_once_in_order(&rows, 70);
        carrier.shutdown().await;
    }
);

consumer_test!(
    two_replicas_of_a_consumer_apply_each_event_once_in_order,
    |db, kind| async move {
        let (producer, consumer_db) = databases(db).await;
        let outbox = Outbox::new(EventSource::Profiles);
        let Some(carrier) = Carrier::start(kind, &producer, &outbox).await else {
            return;
        };
        let stop = CancellationToken::new();
        let replicas: Vec<_> = (0..2)
            .map(|_| {
                let replica = consumer(&consumer_db, &carrier.transport, Recorder::new());
                tokio::spawn(replica.run(stop.clone()))
            })
            .collect();
        produce(&producer, &outbox, "t-a", 0, 60, 3).await;
        produce(&producer, &outbox, "t-b", 60, 60, 1).await;
        let rows = wait_for_effects(&consumer_db, 120).await;
        // Nothing more arrives late.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        for replica in replicas {
            replica.await.unwrap();
        }
        assert_eq!(effects(&consumer_db).await, rows);
        assert_once_in_order(&rows, 120);
        carrier.shutdown().await;
    }
);

consumer_test!(
    a_replica_that_dies_holding_events_loses_none,
    |db, kind| async move {
        let (producer, consumer_db) = databases(db).await;
        let outbox = Outbox::new(EventSource::Profiles);
        let Some(carrier) = Carrier::start(kind, &producer, &outbox).await else {
            return;
        };
        produce(&producer, &outbox, "t-a", 0, 40, 4).await;
        // The first replica stops answering in the middle of a batch, its transaction
        // open, and is killed there.
        let mut hanging = Recorder::new();
        hanging.hang_on_call = Some(10);
        let first = consumer(&consumer_db, &carrier.transport, hanging);
        let stuck = tokio::spawn(first.run(CancellationToken::new()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        stuck.abort();
        let _ = stuck.await;

        let stop = CancellationToken::new();
        let second = consumer(&consumer_db, &carrier.transport, Recorder::new());
        let task = tokio::spawn(second.run(stop.clone()));
        let rows = wait_for_effects(&consumer_db, 40).await;
        stop.cancel();
        task.await.unwrap();
        assert_once_in_order(&rows, 40);
        carrier.shutdown().await;
    }
);
