//! The campaigns service: win-back chains, campaigns, enrolment, durable steps, caps, holdout, attribution and reports.
//!
//! A library with one entry point, [`serve`], and [`mount`] for the `winback` binary that
//! runs every service in one process. Reads top-down: `grpc` (handlers) → `chains`,
//! `campaigns`, `enrolment`, `enrolments`, `worker` (durable steps), `reactions` (other
//! services' events), `report`, `policies` → `peers` (clients) → `domain` (pure rules) →
//! `store` (SQL).

mod campaigns;
mod chains;
mod context;
mod domain;
mod enrolment;
mod enrolments;
mod grpc;
mod peers;
mod policies;
mod reactions;
mod report;
pub mod store;
mod worker;

use tokio_util::sync::CancellationToken;
use winback_platform::config::Config;
use winback_platform::grpc::GrpcServer;
use winback_platform::host::{Mounted, ServiceContext, StartError, serve_alone};
use winback_proto::campaigns::campaigns_service_server::CampaignsServiceServer;
use winback_proto::events::EventSource;

/// Name of the service's database and schema.
pub const SERVICE: &str = "campaigns";

/// Opens the database, runs the migrations, adds the service to `server`, and starts the
/// step workers (`campaigns.workers`) and the event consumers (`campaigns.consume_events`).
pub async fn mount(ctx: &ServiceContext, server: &mut GrpcServer) -> Result<Mounted, StartError> {
    let host = ctx.clone();
    ctx.mount::<store::Migrator, _>(
        server,
        SERVICE,
        EventSource::Campaigns,
        |db, outbox, limit| {
            let requests = winback_platform::idempotency::RequestLog::new(db.clone());
            let campaigns = context::Campaigns::new(db, outbox, &host);
            for _ in 0..campaigns.config.workers {
                tokio::spawn(campaigns.clone().run_worker(host.shutdown.clone()));
            }
            if campaigns.config.consume_events {
                reactions::start_consumers(&campaigns);
            }
            CampaignsServiceServer::new(grpc::CampaignsGrpc {
                campaigns,
                requests,
            })
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
        },
    )
    .await
}

/// Runs the campaigns service alone until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    serve_alone(config, shutdown, |ctx, server| Box::pin(mount(ctx, server))).await
}
