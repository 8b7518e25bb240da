//! What every Winback service shares: configuration, telemetry, database connections and
//! migrations, the gRPC server bootstrap (health, reflection, auth and tenancy, limits,
//! graceful shutdown), the clock, error mapping, and the event feed.

pub mod api_keys;
pub mod auth;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod field_mask;
pub mod grpc;
pub mod host;
pub mod idempotency;
pub mod metrics;
pub mod money;
pub mod paging;
pub mod quotas;
pub mod secrets;
pub mod shutdown;
pub mod telemetry;
pub mod tenancy;
pub mod testing;
pub mod time;

pub use error::{FieldViolation, ServiceError};

/// Every Winback binary (the services, `winback`, benches and tests) allocates with
/// mimalloc: batch paths build and drop many small strings and values per row, and
/// glibc's malloc was a fifth of the profiles ingest profile (`docs/profiles.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
