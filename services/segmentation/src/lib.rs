//! The segmentation service: RFM scores, named segments, purchase cycles, lifecycle states and model fits.
//!
//! A library with one entry point, [`serve`], and [`mount`] for the `winback` binary that
//! runs every service in one process. Reads top-down: `grpc` (handlers) → `store`.

mod grpc;
pub mod store;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use winback_platform::config::Config;
use winback_platform::events::{FeedReader, Outbox};
use winback_platform::grpc::GrpcServer;
use winback_platform::host::{Mounted, ServiceContext, StartError};
use winback_proto::events::EventSource;
use winback_proto::segmentation::segmentation_service_server::SegmentationServiceServer;

/// Name of the service's database and schema.
pub const SERVICE: &str = "segmentation";

/// Opens the database, runs the migrations, and adds the service to `server`.
pub async fn mount(ctx: &ServiceContext, server: &mut GrpcServer) -> Result<Mounted, StartError> {
    let db = ctx.database::<store::Migrator>(SERVICE).await?;
    let outbox = Outbox::new(EventSource::Segmentation);
    let feed = FeedReader::new(db.clone(), &outbox);
    let limit = ctx.config.server.max_message_bytes;
    let service = SegmentationServiceServer::new(grpc::SegmentationGrpc)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    server.add_service(service).await;
    server
        .health()
        .set_service_status(
            winback_proto::service_names::SEGMENTATION,
            ServingStatus::Serving,
        )
        .await;
    Ok(Mounted {
        name: winback_proto::service_names::SEGMENTATION,
        feed: Some((EventSource::Segmentation, feed)),
    })
}

/// Runs the segmentation service alone until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let ctx = ServiceContext::new(config, shutdown)?;
    let listener = ctx.bind().await?;
    let mut server = ctx.server();
    let mounted = mount(&ctx, &mut server).await?;
    ctx.serve(server, listener, vec![mounted]).await
}
