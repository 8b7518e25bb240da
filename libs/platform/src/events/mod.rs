//! The event feed between services: a transactional outbox per service, served as a
//! cursor-based `Subscribe` stream, and consumers that keep their cursor in their own
//! database; in the stack mode the same events can travel over NATS JetStream
//! (`jetstream`). See `docs/events.md`.

pub mod consumer;
pub mod cursor;
pub mod feed;
pub mod jetstream;
pub mod migration;
pub mod outbox;

pub use consumer::{
    EventConsumer, EventHandler, EventTransport, GrpcEventTransport, HandlerError, Received,
};
pub use cursor::Cursor;
pub use feed::{EventsGrpc, FeedFilter, FeedReader};
pub use jetstream::{JetStream, JetStreamError, JetStreamTransport, Receipt};
pub use outbox::Outbox;
