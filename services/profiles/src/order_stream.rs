//! The reading side of `StreamOrders`: a task that reads the client's chunks as they
//! arrive, checks and prepares them (shape, fingerprints, spend per category), and hands
//! them to the handler a group at a time — all the chunks that arrived while the group
//! before was being written, up to [`GROUP_ORDERS`] orders. Decoding and preparing a group
//! so run on the other core while its predecessor's transaction runs, instead of in turn.

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};
use winback_proto::profiles::StreamOrdersRequest;

use crate::context::Profiles;
use crate::orders::{OnInvalid, OrderChunk, PreparedGroup};

/// Orders of a stream recorded in one transaction at most. A group only grows this large
/// when the client sends faster than the groups are written; then each customer's facts
/// are written once for all its orders in the group, and the group's fixed costs (lookups,
/// change set, commit) spread over more orders. 50,000 rather than 10,000 took the bench
/// at 10⁴ customers from ~50,000 to ~70,000 orders/s on SQLite and from ~29,000 to
/// ~48,000 on PostgreSQL (docs/profiles.md); the price is a transaction of up to ~1 s and
/// ~25 MB of prepared orders held per stream while the one before is written.
pub(crate) const GROUP_ORDERS: usize = 50_000;

/// What the reader hands over when the handler asks for the next group.
#[derive(Debug, Default)]
pub(crate) struct GroupRead {
    /// The chunks read since the last group (empty when the stream ended or broke first).
    pub(crate) group: PreparedGroup,
    /// How the stream treats bad orders (set by its first chunk).
    pub(crate) on_invalid: Option<OnInvalid>,
    /// The stream failed after the group's chunks.
    pub(crate) broken: Option<Status>,
    /// The client closed the stream after the group's chunks.
    pub(crate) ended: bool,
}

/// The reader task of one stream; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct GroupReader {
    asks: mpsc::Sender<oneshot::Sender<GroupRead>>,
    task: JoinHandle<()>,
}

impl Drop for GroupReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GroupReader {
    /// Starts reading `stream`.
    pub(crate) fn spawn(profiles: Profiles, stream: Streaming<StreamOrdersRequest>) -> Self {
        let (asks, asked) = mpsc::channel(1);
        let task = tokio::spawn(read(profiles, stream, asked));
        Self { asks, task }
    }

    /// The next group: what has been read since the last one, or — when nothing has — the
    /// next chunk as soon as it arrives.
    pub(crate) async fn next(&mut self) -> Result<GroupRead, Status> {
        let stopped = || Status::internal("the order stream's reader stopped");
        let (answer, answered) = oneshot::channel();
        self.asks.send(answer).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())
    }
}

/// Reads and prepares chunks until the stream ends, breaks, or a chunk is refused, handing
/// a group over on each ask.
async fn read(
    profiles: Profiles,
    mut stream: Streaming<StreamOrdersRequest>,
    mut asked: mpsc::Receiver<oneshot::Sender<GroupRead>>,
) {
    let mut read = GroupRead::default();
    let mut orders = 0usize;
    let mut index = 0usize;
    let mut waiting: Option<oneshot::Sender<GroupRead>> = None;
    loop {
        let done = read.ended || read.broken.is_some() || read.group.refused.is_some();
        if (done || !read.group.is_empty())
            && let Some(answer) = waiting.take()
        {
            let on_invalid = read.on_invalid;
            let group = std::mem::replace(
                &mut read,
                GroupRead {
                    on_invalid,
                    ..GroupRead::default()
                },
            );
            orders = 0;
            if answer.send(group).is_err() || done {
                return;
            }
            continue;
        }
        tokio::select! {
            // Reading first: a group takes every chunk that has arrived.
            biased;
            next = stream.next(), if !done && orders < GROUP_ORDERS => match next {
                None => read.ended = true,
                Some(Err(status)) => read.broken = Some(status),
                Some(Ok(chunk)) => {
                    let on_invalid = *read.on_invalid.get_or_insert(if chunk.skip_invalid {
                        OnInvalid::SkipOrder
                    } else {
                        OnInvalid::RefuseBatch
                    });
                    let n = chunk.orders.len();
                    if n > 0 {
                        let chunk = OrderChunk {
                            orders: chunk.orders,
                            first_index: index,
                        };
                        match profiles.prepare_chunk(chunk, on_invalid) {
                            Ok(checked) => read.group.checked.push(checked),
                            Err(err) => read.group.refused = Some(err),
                        }
                        index += n;
                        orders += n;
                    }
                }
            },
            ask = asked.recv(), if waiting.is_none() => match ask {
                Some(answer) => waiting = Some(answer),
                // The handler is gone.
                None => return,
            },
        }
    }
}
