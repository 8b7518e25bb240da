//! The offers service: offer templates, ladders, personal one-time coupons, redemption, budgets and anti-fraud.
//!
//! A library with one entry point, [`serve`], and [`mount`] for the `winback` binary that
//! runs every service in one process. Reads top-down: `grpc` (handlers) → `store`.

mod context;
mod coupons;
mod domain;
mod fraud;
mod grpc;
pub mod store;
mod templates;

use tokio_util::sync::CancellationToken;
use winback_platform::config::Config;
use winback_platform::grpc::GrpcServer;
use winback_platform::host::{Mounted, ServiceContext, StartError, serve_alone};
use winback_proto::events::EventSource;
use winback_proto::offers::offers_service_server::OffersServiceServer;

/// Name of the service's database and schema.
pub const SERVICE: &str = "offers";

/// Opens the database, runs the migrations, and adds the service to `server`.
pub async fn mount(ctx: &ServiceContext, server: &mut GrpcServer) -> Result<Mounted, StartError> {
    let clock = ctx.clock.clone();
    let profiles = context::ProfilesPeer::new(ctx);
    ctx.mount::<store::Migrator, _>(server, SERVICE, EventSource::Offers, |db, outbox, limit| {
        OffersServiceServer::new(grpc::OffersGrpc {
            requests: winback_platform::idempotency::RequestLog::new(db.clone()),
            offers: context::Offers::new(db, outbox, clock, profiles),
        })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
    })
    .await
}

/// Runs the offers service alone until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    serve_alone(config, shutdown, |ctx, server| Box::pin(mount(ctx, server))).await
}
