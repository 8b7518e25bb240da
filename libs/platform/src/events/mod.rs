//! The event feed between services: a transactional outbox per service, served as a
//! cursor-based `Subscribe` stream, and consumers that keep their cursor in their own
//! database. See `docs/events.md`.

pub mod consumer;
pub mod cursor;
pub mod feed;
pub mod migration;
pub mod outbox;

pub use consumer::{EventConsumer, EventHandler, EventTransport, GrpcEventTransport, HandlerError};
pub use cursor::Cursor;
pub use feed::{EventsGrpc, FeedFilter, FeedReader};
pub use outbox::Outbox;
