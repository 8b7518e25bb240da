//! `StreamFacts`: the facts of a whole tenant, or of the customers changed since a cursor,
//! in chunks. This is what segmentation reads on every recompute.

use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;
use winback_platform::ServiceError;
use winback_platform::events::Cursor;
use winback_proto::profiles::{CustomerFacts, StreamFactsResponse};

use crate::context::Profiles;
use crate::store::rows;

const DEFAULT_CHUNK: usize = 1000;
const MAX_CHUNK: usize = 10_000;

fn decode(bytes: &[u8]) -> Result<CustomerFacts, Status> {
    CustomerFacts::decode(bytes)
        .map_err(|e| Status::internal(format!("stored facts do not decode: {e}")))
}

impl Profiles {
    /// Starts streaming; errors in the request are returned before the stream starts.
    pub(crate) fn stream_facts(
        &self,
        tenant: String,
        changed_since: &str,
        chunk_size: i32,
    ) -> Result<mpsc::Receiver<Result<StreamFactsResponse, Status>>, ServiceError> {
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

    /// The whole tenant, by customer id; every chunk carries the cursor to resume from.
    async fn send_all(
        &self,
        tenant: &str,
        chunk: usize,
        tx: &mpsc::Sender<Result<StreamFactsResponse, Status>>,
    ) -> Result<(), Status> {
        let internal = |e: sea_orm::DbErr| Status::from(ServiceError::from(e));
        let cursor = rows::facts_horizon(&self.db)
            .await
            .map_err(internal)?
            .to_string();
        let mut after = String::new();
        loop {
            let page = rows::facts_page(&self.db, tenant, &after, chunk as u64)
                .await
                .map_err(internal)?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            let full = page.len() == chunk;
            let facts = page
                .iter()
                .map(|(_, bytes)| decode(bytes))
                .collect::<Result<Vec<_>, _>>()?;
            let message = StreamFactsResponse {
                facts,
                cursor: cursor.clone(),
            };
            if tx.send(Ok(message)).await.is_err() || !full {
                return Ok(());
            }
        }
        // An empty tenant still tells where to resume from.
        let _ = tx
            .send(Ok(StreamFactsResponse {
                facts: Vec::new(),
                cursor,
            }))
            .await;
        Ok(())
    }

    /// Customers changed after `after`, in change order.
    async fn send_changed(
        &self,
        tenant: &str,
        mut after: Cursor,
        chunk: usize,
        tx: &mpsc::Sender<Result<StreamFactsResponse, Status>>,
    ) -> Result<(), Status> {
        let internal = |e: sea_orm::DbErr| Status::from(ServiceError::from(e));
        loop {
            let page = rows::facts_changed(&self.db, tenant, after, chunk as u64)
                .await
                .map_err(internal)?;
            if let Some((last, _)) = page.last() {
                after = *last;
            }
            let full = page.len() == chunk;
            let facts = page
                .iter()
                .map(|(_, bytes)| decode(bytes))
                .collect::<Result<Vec<_>, _>>()?;
            let message = StreamFactsResponse {
                facts,
                cursor: after.to_string(),
            };
            if tx.send(Ok(message)).await.is_err() || !full {
                return Ok(());
            }
        }
    }
}
