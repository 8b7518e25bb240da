//! The segmentation service: RFM scores, named segments, purchase cycles, lifecycle states
//! and model fits, from the facts profiles keeps.
//!
//! A library with one entry point, [`serve`], and [`mount`] for the `winback` binary that
//! runs every service in one process. Reads top-down: `grpc` (handlers) → `recompute`,
//! `reads`, `policy` (operations) → `facts` (profiles client), `scores`, `summary` →
//! `store` (SQL). The maths is `winback_scoring`.

mod context;
mod facts;
mod grpc;
mod incremental;
mod members;
mod policy;
mod reads;
mod recompute;
mod scheduler;
mod scores;
pub mod store;
mod summary;

use tokio_util::sync::CancellationToken;
use winback_platform::config::Config;
use winback_platform::grpc::GrpcServer;
use winback_platform::host::{Mounted, ServiceContext, StartError, serve_alone};
use winback_proto::events::EventSource;
use winback_proto::segmentation::segmentation_service_server::SegmentationServiceServer;

/// Name of the service's database and schema.
pub const SERVICE: &str = "segmentation";

/// Opens the database, runs the migrations, and adds the service to `server`; starts the
/// recompute schedule.
pub async fn mount(ctx: &ServiceContext, server: &mut GrpcServer) -> Result<Mounted, StartError> {
    let service_ctx = ctx.clone();
    ctx.mount::<store::Migrator, _>(
        server,
        SERVICE,
        EventSource::Segmentation,
        |db, outbox, limit| {
            let segmentation = context::Segmentation::new(db, outbox, service_ctx);
            tokio::spawn(scheduler::run(segmentation.clone()));
            SegmentationServiceServer::new(grpc::SegmentationGrpc { segmentation })
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        },
    )
    .await
}

/// Runs the segmentation service alone until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    serve_alone(config, shutdown, |ctx, server| Box::pin(mount(ctx, server))).await
}
