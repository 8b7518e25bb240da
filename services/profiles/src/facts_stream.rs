//! `StreamFacts`: the facts of a whole tenant, or of the customers changed since a cursor,
//! in chunks. This is what segmentation reads on every recompute.

use sea_orm::{ConnectionTrait, DbBackend};
use tokio::sync::mpsc;
use tonic::Status;
use winback_platform::ServiceError;
use winback_platform::events::Cursor;

use crate::context::Profiles;
use crate::facts_route::EncodedChunk;
use crate::store::rows;

const DEFAULT_CHUNK: usize = 1000;
const MAX_CHUNK: usize = 10_000;

impl Profiles {
    /// Starts streaming; errors in the request are returned before the stream starts.
    pub(crate) fn stream_facts(
        &self,
        tenant: String,
        changed_since: &str,
        chunk_size: i32,
    ) -> Result<mpsc::Receiver<Result<EncodedChunk, Status>>, ServiceError> {
        let chunk = match chunk_size {
            0 => DEFAULT_CHUNK,
            1..=10_000 => chunk_size as usize,
            _ => {
                return Err(ServiceError::invalid(
                    "chunk_size",
                    format!("must be 0 to {MAX_CHUNK}"),
                ));
            }
        };
        let since: Option<Cursor> =
            if changed_since.is_empty() {
                None
            } else {
                Some(changed_since.parse().map_err(|_| {
                    ServiceError::invalid("changed_since_cursor", "malformed cursor")
                })?)
            };
        let (tx, rx) = mpsc::channel(4);
        let profiles = self.clone();
        tokio::spawn(async move {
            let result = match since {
                None => profiles.send_all(&tenant, chunk, &tx).await,
                Some(cursor) => profiles.send_changed(&tenant, cursor, chunk, &tx).await,
            };
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(rx)
    }

    /// The whole tenant, by customer id, in one streamed query (one plan, no per-page
    /// re-planning); every chunk carries the cursor to resume from.
    async fn send_all(
        &self,
        tenant: &str,
        chunk: usize,
        tx: &mpsc::Sender<Result<EncodedChunk, Status>>,
    ) -> Result<(), Status> {
        use sea_orm::{StreamTrait, TransactionTrait};
        let cursor = rows::facts_horizon(&self.db)
            .await
            .map_err(internal)?
            .to_string();
        let backend = self.db.get_database_backend();
        let statement = winback_platform::db::statement(
            backend,
            "SELECT encoded FROM facts WHERE tenant_id = $1 ORDER BY customer_id",
            vec![tenant.into()],
        );
        if backend != DbBackend::Postgres {
            let rows = self.db.stream_raw(statement).await.map_err(internal)?;
            return send_chunks(rows, chunk, &cursor, tx).await;
        }
        // PostgreSQL planned the whole tenant as a bitmap scan and a sort of every row
        // (spilling to disk at 10⁶ customers); the primary key already gives customer order.
        let txn = self.db.begin().await.map_err(internal)?;
        txn.execute_unprepared("SET LOCAL enable_sort = off")
            .await
            .map_err(internal)?;
        let rows = txn.stream_raw(statement).await.map_err(internal)?;
        send_chunks(rows, chunk, &cursor, tx).await?;
        txn.commit().await.map_err(internal)
    }

    /// Customers changed after `after`, in change order.
    async fn send_changed(
        &self,
        tenant: &str,
        mut after: Cursor,
        chunk: usize,
        tx: &mpsc::Sender<Result<EncodedChunk, Status>>,
    ) -> Result<(), Status> {
        loop {
            let page = rows::facts_changed(&self.db, tenant, after, chunk as u64)
                .await
                .map_err(internal)?;
            if let Some((last, _)) = page.last() {
                after = *last;
            }
            let full = page.len() == chunk;
            let message = EncodedChunk::new(
                page.iter().map(|(_, bytes)| bytes.as_slice()),
                &after.to_string(),
            );
            if tx.send(Ok(message)).await.is_err() || !full {
                return Ok(());
            }
        }
    }
}

/// Sends streamed rows of encoded facts in chunks of `chunk`, each with `cursor`; an empty
/// tenant still gets one (empty) chunk telling where to resume from.
async fn send_chunks(
    mut rows: impl tokio_stream::Stream<Item = Result<sea_orm::QueryResult, sea_orm::DbErr>> + Unpin,
    chunk: usize,
    cursor: &str,
    tx: &mpsc::Sender<Result<EncodedChunk, Status>>,
) -> Result<(), Status> {
    use tokio_stream::StreamExt;
    let mut page: Vec<Vec<u8>> = Vec::with_capacity(chunk);
    let mut sent_any = false;
    while let Some(row) = rows.next().await {
        let row = row.map_err(internal)?;
        page.push(row.try_get("", "encoded").map_err(internal)?);
        if page.len() == chunk {
            let message = EncodedChunk::new(page.iter().map(Vec::as_slice), cursor);
            page.clear();
            sent_any = true;
            if tx.send(Ok(message)).await.is_err() {
                return Ok(());
            }
        }
    }
    if !page.is_empty() || !sent_any {
        let _ = tx
            .send(Ok(EncodedChunk::new(
                page.iter().map(Vec::as_slice),
                cursor,
            )))
            .await;
    }
    Ok(())
}

/// A database error as the stream's status.
fn internal(e: sea_orm::DbErr) -> Status {
    Status::from(ServiceError::from(e))
}
