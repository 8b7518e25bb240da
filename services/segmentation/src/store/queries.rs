//! The SQL behind the handlers (plain statements; `$n` placeholders work on both backends
//! through `winback_platform::db::statement`).

use sea_orm::{ConnectionTrait, DbErr, QueryResult, Value};
use winback_platform::db::{multi_row_insert, statement};

/// One stored chunk of scores.
#[derive(Debug)]
pub(crate) struct ChunkRow {
    pub(crate) first_customer_id: String,
    pub(crate) last_customer_id: String,
    pub(crate) scores: Vec<u8>,
}

/// One recompute run.
#[derive(Debug, Clone)]
pub(crate) struct RunRow {
    pub(crate) recompute_id: String,
    pub(crate) as_of_us: i64,
    pub(crate) finished_at_us: i64,
    pub(crate) took_us: i64,
    pub(crate) customers: i64,
    pub(crate) segment_changes: i64,
    pub(crate) lifecycle_changes: i64,
    pub(crate) summary: Vec<u8>,
    pub(crate) models: Vec<u8>,
    /// An encoded `RunState` (empty when the run left none: a backtest, or older runs).
    pub(crate) incremental: Vec<u8>,
}

/// One stored transition.
#[derive(Debug, Clone)]
pub(crate) struct TransitionRow {
    pub(crate) seq: i64,
    pub(crate) customer_id: String,
    pub(crate) from_segment: String,
    pub(crate) to_segment: String,
    pub(crate) from_state: i32,
    pub(crate) to_state: i32,
    pub(crate) recompute_id: String,
    pub(crate) at_us: i64,
}

async fn query_all<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: Vec<Value>,
) -> Result<Vec<QueryResult>, DbErr> {
    db.query_all_raw(statement(db.get_database_backend(), sql, values))
        .await
}

async fn execute<C: ConnectionTrait>(db: &C, sql: &str, values: Vec<Value>) -> Result<(), DbErr> {
    db.execute_raw(statement(db.get_database_backend(), sql, values))
        .await
        .map(|_| ())
}

/// The tenant's stored policy (encoded).
pub(crate) async fn policy<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
) -> Result<Option<Vec<u8>>, DbErr> {
    let rows = query_all(
        db,
        "SELECT policy FROM policies WHERE tenant_id = $1",
        vec![tenant.into()],
    )
    .await?;
    rows.first()
        .map(|r| r.try_get::<Vec<u8>>("", "policy"))
        .transpose()
}

/// Stores the tenant's policy.
pub(crate) async fn put_policy<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    policy: Vec<u8>,
    now_us: i64,
) -> Result<(), DbErr> {
    execute(
        db,
        "INSERT INTO policies (tenant_id, policy, updated_at_us) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id) DO UPDATE SET policy = excluded.policy, updated_at_us = excluded.updated_at_us",
        vec![tenant.into(), policy.into(), now_us.into()],
    )
    .await
}

/// Tenants with a stored policy (the scheduler checks their `recompute_every`).
pub(crate) async fn policies<C: ConnectionTrait>(db: &C) -> Result<Vec<(String, Vec<u8>)>, DbErr> {
    query_all(
        db,
        "SELECT tenant_id, policy FROM policies ORDER BY tenant_id",
        vec![],
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get("", "tenant_id")?, r.try_get("", "policy")?)))
    .collect()
}

/// Chunks of the tenant's scores from chunk number `from`, in order.
pub(crate) async fn chunks<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    from: i64,
    limit: i64,
) -> Result<Vec<(i64, ChunkRow)>, DbErr> {
    query_all(
        db,
        "SELECT chunk_no, first_customer_id, last_customer_id, scores FROM score_chunks
         WHERE tenant_id = $1 AND chunk_no >= $2 ORDER BY chunk_no LIMIT $3",
        vec![tenant.into(), from.into(), limit.into()],
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get("", "chunk_no")?, chunk_row(r)?)))
    .collect()
}

fn chunk_row(r: &QueryResult) -> Result<ChunkRow, DbErr> {
    Ok(ChunkRow {
        first_customer_id: r.try_get("", "first_customer_id")?,
        last_customer_id: r.try_get("", "last_customer_id")?,
        scores: r.try_get("", "scores")?,
    })
}

/// The chunk that would hold `customer_id`.
pub(crate) async fn chunk_of<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    customer_id: &str,
) -> Result<Option<ChunkRow>, DbErr> {
    let rows = query_all(
        db,
        "SELECT first_customer_id, last_customer_id, scores FROM score_chunks
         WHERE tenant_id = $1 AND first_customer_id <= $2 ORDER BY first_customer_id DESC LIMIT 1",
        vec![tenant.into(), customer_id.into()],
    )
    .await?;
    rows.first().map(chunk_row).transpose()
}

/// Deletes all of the tenant's scores (a recompute then inserts the new ones).
pub(crate) async fn delete_chunks<C: ConnectionTrait>(db: &C, tenant: &str) -> Result<(), DbErr> {
    execute(
        db,
        "DELETE FROM score_chunks WHERE tenant_id = $1",
        vec![tenant.into()],
    )
    .await
}

/// Inserts numbered chunks of the tenant's scores, in one statement.
pub(crate) async fn insert_chunks<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    chunks: Vec<(i64, ChunkRow)>,
) -> Result<(), DbErr> {
    if chunks.is_empty() {
        return Ok(());
    }
    let rows = chunks.into_iter().map(|(chunk_no, chunk)| {
        vec![
            tenant.into(),
            chunk_no.into(),
            chunk.first_customer_id.into(),
            chunk.last_customer_id.into(),
            chunk.scores.into(),
        ]
    });
    db.execute_raw(multi_row_insert(
        db.get_database_backend(),
        "INSERT INTO score_chunks (tenant_id, chunk_no, first_customer_id, last_customer_id, scores)",
        rows,
    ))
    .await
    .map(|_| ())
}

/// Every patch of the tenant, in customer id order.
pub(crate) async fn patches<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
) -> Result<Vec<(String, Vec<u8>)>, DbErr> {
    query_all(
        db,
        "SELECT customer_id, score FROM score_patches WHERE tenant_id = $1 ORDER BY customer_id",
        vec![tenant.into()],
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get("", "customer_id")?, r.try_get("", "score")?)))
    .collect()
}

/// One customer's patch.
pub(crate) async fn patch<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    customer_id: &str,
) -> Result<Option<Vec<u8>>, DbErr> {
    let rows = query_all(
        db,
        "SELECT score FROM score_patches WHERE tenant_id = $1 AND customer_id = $2",
        vec![tenant.into(), customer_id.into()],
    )
    .await?;
    rows.first().map(|r| r.try_get("", "score")).transpose()
}

/// Writes patches (an encoded score, or empty for an erased customer), replacing any.
pub(crate) async fn put_patches<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    patches: Vec<(String, Vec<u8>)>,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let mut rows = patches
        .into_iter()
        .map(|(customer_id, score)| vec![tenant.into(), customer_id.into(), score.into()])
        .peekable();
    while rows.peek().is_some() {
        let insert = multi_row_insert(
            backend,
            "INSERT INTO score_patches (tenant_id, customer_id, score)",
            rows.by_ref().take(1_000),
        );
        let sql = format!(
            "{} ON CONFLICT (tenant_id, customer_id) DO UPDATE SET score = excluded.score",
            insert.sql
        );
        db.execute_raw(sea_orm::Statement { sql, ..insert }).await?;
    }
    Ok(())
}

/// Deletes the tenant's patches (a full recompute folds them into its chunks).
pub(crate) async fn delete_patches<C: ConnectionTrait>(db: &C, tenant: &str) -> Result<(), DbErr> {
    execute(
        db,
        "DELETE FROM score_patches WHERE tenant_id = $1",
        vec![tenant.into()],
    )
    .await
}

/// Records a run.
pub(crate) async fn insert_run<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    run: RunRow,
) -> Result<(), DbErr> {
    execute(
        db,
        "INSERT INTO recompute_runs (tenant_id, recompute_id, as_of_us, finished_at_us, took_us, customers,
            segment_changes, lifecycle_changes, summary, models, incremental)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        vec![
            tenant.into(),
            run.recompute_id.into(),
            run.as_of_us.into(),
            run.finished_at_us.into(),
            run.took_us.into(),
            run.customers.into(),
            run.segment_changes.into(),
            run.lifecycle_changes.into(),
            run.summary.into(),
            run.models.into(),
            (!run.incremental.is_empty()).then_some(run.incremental).into(),
        ],
    )
    .await
}

/// The tenant's latest runs, newest first.
pub(crate) async fn runs<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    limit: i64,
) -> Result<Vec<RunRow>, DbErr> {
    query_all(
        db,
        "SELECT recompute_id, as_of_us, finished_at_us, took_us, customers, segment_changes, lifecycle_changes,
            summary, models, incremental
         FROM recompute_runs WHERE tenant_id = $1 ORDER BY finished_at_us DESC, recompute_id DESC LIMIT $2",
        vec![tenant.into(), limit.into()],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(RunRow {
            recompute_id: r.try_get("", "recompute_id")?,
            as_of_us: r.try_get("", "as_of_us")?,
            finished_at_us: r.try_get("", "finished_at_us")?,
            took_us: r.try_get("", "took_us")?,
            customers: r.try_get("", "customers")?,
            segment_changes: r.try_get("", "segment_changes")?,
            lifecycle_changes: r.try_get("", "lifecycle_changes")?,
            summary: r.try_get("", "summary")?,
            models: r.try_get("", "models")?,
            incremental: r
                .try_get::<Option<Vec<u8>>>("", "incremental")?
                .unwrap_or_default(),
        })
    })
    .collect()
}

/// Records transitions, a few hundred per statement.
pub(crate) async fn insert_transitions<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    rows: &[TransitionRow],
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    if backend == sea_orm::DbBackend::Postgres {
        // Column arrays and UNNEST: a tenant's first recompute records a transition per
        // customer, and a million rows in statements of 400 took most of a minute.
        for batch in rows.chunks(50_000) {
            let text = |f: fn(&TransitionRow) -> &str| -> Value {
                batch
                    .iter()
                    .map(|t| f(t).to_owned())
                    .collect::<Vec<String>>()
                    .into()
            };
            let ints = |f: fn(&TransitionRow) -> i64| -> Value {
                batch.iter().map(f).collect::<Vec<i64>>().into()
            };
            execute(
                db,
                "INSERT INTO transitions (tenant_id, customer_id, from_segment, to_segment, from_state, to_state, recompute_id, at_us)
                 SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::bigint[])",
                vec![
                    tenant.into(),
                    text(|t| &t.customer_id),
                    text(|t| &t.from_segment),
                    text(|t| &t.to_segment),
                    ints(|t| i64::from(t.from_state)),
                    ints(|t| i64::from(t.to_state)),
                    text(|t| &t.recompute_id),
                    ints(|t| t.at_us),
                ],
            )
            .await?;
        }
        return Ok(());
    }
    for batch in rows.chunks(400) {
        let values = batch.iter().map(|t| {
            vec![
                tenant.into(),
                t.customer_id.clone().into(),
                t.from_segment.clone().into(),
                t.to_segment.clone().into(),
                i64::from(t.from_state).into(),
                i64::from(t.to_state).into(),
                t.recompute_id.clone().into(),
                t.at_us.into(),
            ]
        });
        db.execute_raw(multi_row_insert(
            backend,
            "INSERT INTO transitions (tenant_id, customer_id, from_segment, to_segment, from_state, to_state, recompute_id, at_us)",
            values,
        ))
        .await?;
    }
    Ok(())
}

/// Transitions newest first, before sequence `before` (0 = from the newest).
pub(crate) async fn transitions<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    customer_id: &str,
    since_us: i64,
    before: i64,
    limit: i64,
) -> Result<Vec<TransitionRow>, DbErr> {
    query_all(
        db,
        "SELECT seq, customer_id, from_segment, to_segment, from_state, to_state, recompute_id, at_us
         FROM transitions
         WHERE tenant_id = $1 AND ($2 = '' OR customer_id = $2) AND at_us >= $3 AND ($4 = 0 OR seq < $4)
         ORDER BY seq DESC LIMIT $5",
        vec![tenant.into(), customer_id.into(), since_us.into(), before.into(), limit.into()],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(TransitionRow {
            seq: r.try_get("", "seq")?,
            customer_id: r.try_get("", "customer_id")?,
            from_segment: r.try_get("", "from_segment")?,
            to_segment: r.try_get("", "to_segment")?,
            from_state: r.try_get::<i64>("", "from_state")? as i32,
            to_state: r.try_get::<i64>("", "to_state")? as i32,
            recompute_id: r.try_get("", "recompute_id")?,
            at_us: r.try_get("", "at_us")?,
        })
    })
    .collect()
}
