//! The gRPC server every service runs on: its own services plus `grpc.health.v1` and server
//! reflection, request tracing, authentication, limits and timeouts, and a graceful
//! shutdown that drains in-flight calls.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Service;

use super::auth_layer::AuthLayer;
use super::deadline_layer::{DeadlineLayer, client_streaming_paths};
use super::trace_layer::TraceLayer;
use crate::auth::TokenVerifier;
use crate::config::ServerConfig;
use crate::quotas::Quotas;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built from the descriptor sets.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A gRPC server being assembled.
pub struct GrpcServer {
    config: ServerConfig,
    verifier: Arc<TokenVerifier>,
    quotas: Quotas,
    routes: RoutesBuilder,
    health: HealthReporter,
    health_service: tonic_health::server::HealthService,
    names: Vec<&'static str>,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer")
            .field("services", &self.names)
            .finish_non_exhaustive()
    }
}

impl GrpcServer {
    /// Limits each tenant's calls by `quotas` (without, calls are not limited).
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = quotas;
        self
    }

    /// A server with the given limits, verifying tokens with `verifier`.
    pub fn new(config: &ServerConfig, verifier: TokenVerifier) -> Self {
        let health = HealthReporter::new();
        let health_service =
            tonic_health::server::HealthService::from_health_reporter(health.clone());
        Self {
            config: config.clone(),
            verifier: Arc::new(verifier),
            quotas: Quotas::new(crate::config::QuotaConfig::unlimited()),
            routes: RoutesBuilder::default(),
            health,
            health_service,
            names: Vec::new(),
        }
    }

    /// The health reporter: each service sets its own status.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Adds a service; its health starts as NOT_SERVING until the service says otherwise.
    pub async fn add_service<S>(&mut self, service: S) -> &mut Self
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.health
            .set_service_status(S::NAME, ServingStatus::NotServing)
            .await;
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Names of the services added.
    pub fn service_names(&self) -> &[&'static str] {
        &self.names
    }

    /// Serves on `listener` until `shutdown` completes, then reports NOT_SERVING, stops
    /// accepting calls, and waits up to the configured grace for in-flight calls to finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(winback_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(winback_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let watches_end = tokio_util::sync::CancellationToken::new();
        let mut routes = self.routes;
        routes
            .add_service(tonic_health::pb::health_server::HealthServer::new(
                super::health::DrainingHealth {
                    inner: self.health_service,
                    stopped: watches_end.clone(),
                },
            ))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let streaming_requests = client_streaming_paths(&[winback_proto::FILE_DESCRIPTOR_SET]);
        let layers = tower::ServiceBuilder::new()
            .layer(TraceLayer::default())
            .layer(DeadlineLayer::new(
                Duration::from_millis(self.config.request_timeout_ms),
                streaming_requests,
            ))
            .layer(AuthLayer::new(self.verifier, self.quotas));
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        let health = self.health.clone();
        let names = self.names.clone();
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

        let server = Server::builder()
            .concurrency_limit_per_connection(self.config.concurrency_per_connection)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            // Room for a client stream's next chunks (an order chunk is ~100 KiB) to
            // arrive while the handler writes the last ones.
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(8 << 20))
            .layer(layers)
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                // The server as a whole ("") and every service: load balancers and
                // orchestrators stop sending before the listener closes.
                for name in std::iter::once("").chain(names) {
                    health
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
                // Watchers get NOT_SERVING, then their streams end.
                tokio::time::sleep(Duration::from_millis(50)).await;
                watches_end.cancel();
                tracing::info!("shutting down: draining in-flight calls");
                let _ = draining_tx.send(());
            });
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => Ok(result?),
            _ = async {
                if draining_rx.await.is_ok() {
                    tokio::time::sleep(grace).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "shutdown grace elapsed; closing remaining calls");
                Ok(())
            }
        }
    }
}
