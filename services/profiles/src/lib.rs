//! The profiles service: customers, contacts, consent, orders, engagement, bonus balances, and the per-customer facts segmentation reads.
//!
//! A library with one entry point, [`serve`], and [`mount`] for the `winback` binary that
//! runs every service in one process. Reads top-down: `grpc` (handlers) → `store`.

mod bonus;
mod consent;
mod context;
mod customers;
mod delivery_feed;
mod domain;
mod engagement;
mod facts_as_of;
mod facts_frame;
mod facts_route;
mod facts_stream;
mod grpc;
mod order_stream;
mod orders;
pub mod store;
mod written_states;

use tokio_util::sync::CancellationToken;
use winback_platform::config::Config;
use winback_platform::grpc::GrpcServer;
use winback_platform::host::{Mounted, ServiceContext, StartError, serve_alone};
use winback_proto::events::EventSource;
use winback_proto::profiles::profiles_service_server::ProfilesServiceServer;

/// Name of the service's database and schema.
pub const SERVICE: &str = "profiles";

/// Opens the database, runs the migrations, and adds the service to `server`.
pub async fn mount(ctx: &ServiceContext, server: &mut GrpcServer) -> Result<Mounted, StartError> {
    let clock = ctx.clock.clone();
    let host = ctx.clone();
    ctx.mount::<store::Migrator, _>(
        server,
        SERVICE,
        EventSource::Profiles,
        |db, outbox, limit| {
            let requests = winback_platform::idempotency::RequestLog::new(db.clone());
            let profiles = context::Profiles::new(db, outbox, clock);
            delivery_feed::start(&profiles, &host);
            let generated = ProfilesServiceServer::new(grpc::ProfilesGrpc {
                profiles: profiles.clone(),
                requests,
            })
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
            facts_route::ProfilesRoute {
                generated,
                profiles,
                max_message_bytes: limit,
            }
        },
    )
    .await
}

/// Runs the profiles service alone until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    serve_alone(config, shutdown, |ctx, server| Box::pin(mount(ctx, server))).await
}
