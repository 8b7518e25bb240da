//! gRPC health that lets the server stop: `Check` is tonic-health's; a `Watch` stream
//! sends NOT_SERVING when shutdown begins and then ends, instead of holding the drain open
//! for the whole grace period.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthService;

/// Health that ends its watches at shutdown.
pub(crate) struct DrainingHealth {
    pub(crate) inner: HealthService,
    /// Cancelled once NOT_SERVING has been reported.
    pub(crate) stopped: CancellationToken,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let updates = self.inner.watch(request).await?.into_inner();
        let stopped = self.stopped.clone().cancelled_owned();
        Ok(Response::new(Box::pin(updates.take_until(stopped))))
    }
}
