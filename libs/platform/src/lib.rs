//! What every Winback service shares: configuration, telemetry, database connections and
//! migrations, the gRPC server bootstrap (health, reflection, auth and tenancy, limits,
//! graceful shutdown), the clock, error mapping, and the event feed.

pub mod auth;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod grpc;
pub mod host;
pub mod paging;
pub mod shutdown;
pub mod telemetry;
pub mod tenancy;
pub mod testing;
pub mod time;

pub use error::{FieldViolation, ServiceError};
