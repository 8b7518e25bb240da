//! Traces leave over OTLP to a real OTLP/gRPC receiver, and one call is one trace: the
//! client's span context travels in the gRPC metadata and the server's span joins it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use winback_platform::config::{ServerConfig, TelemetryConfig};
use winback_platform::grpc::{CallCredentials, GrpcServer};
use winback_platform::testing::test_keys;
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;
use winback_proto::profiles::profiles_service_server::{ProfilesService, ProfilesServiceServer};
use winback_proto::profiles::{GetFactsRequest, GetFactsResponse};

/// An OTLP receiver that keeps every span and the name of every metric it is sent.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    metrics: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut names = self.metrics.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            for scope in resource.scope_metrics {
                names.extend(scope.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[derive(Debug)]
struct Facts;

#[tonic::async_trait]
impl ProfilesService for Facts {
    async fn get_facts(
        &self,
        _: Request<GetFactsRequest>,
    ) -> Result<Response<GetFactsResponse>, Status> {
        Ok(Response::new(GetFactsResponse::default()))
    }
}

/// Server spans are named `Service/Method`.
const SERVER_SPAN: &str = "winback.profiles.v1.ProfilesService/GetFacts";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_one_trace_exported_over_otlp() {
    // The OTLP receiver.
    let receiver = Receiver::default();
    let otlp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp_addr = otlp.local_addr().unwrap();
    let stop_otlp = CancellationToken::new();
    let stop = stop_otlp.clone();
    let collector = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector))
            .serve_with_incoming_shutdown(TcpIncoming::from(otlp), stop.cancelled_owned())
            .await
            .unwrap();
    });

    let guard = winback_platform::telemetry::init_with_endpoint(
        &TelemetryConfig::default(),
        "winback-telemetry-test",
        Some(format!("http://{otlp_addr}")),
    )
    .unwrap();

    // A Winback server and a client calling it inside a span of its own.
    let (signer, verifier) = test_keys();
    let mut server = GrpcServer::new(&ServerConfig::default(), verifier);
    server.add_service(ProfilesServiceServer::new(Facts)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop_server = CancellationToken::new();
    let stop = stop_server.clone();
    let server_task = tokio::spawn(server.serve(listener, async move { stop.cancelled().await }));

    let token = signer.tenant_token("t-a", &["*"], 60).unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut client =
        ProfilesServiceClient::with_interceptor(channel, CallCredentials::bearer(&token).unwrap());
    async {
        client.get_facts(GetFactsRequest::default()).await.unwrap();
    }
    .instrument(tracing::info_span!("campaign_step"))
    .await;
    // A business counter, as delivery records one per accepted message.
    winback_platform::metrics::message_sent("t-a", "email");

    stop_server.cancel();
    server_task.await.unwrap().unwrap();
    // Dropping the guard flushes the batch exporter; it blocks, so off the async threads.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let spans = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            {
                let spans = receiver.spans.lock().unwrap();
                if spans.iter().any(|s| s.name == "campaign_step")
                    && spans.iter().any(|s| s.name == SERVER_SPAN)
                {
                    return spans.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("both spans reach the OTLP receiver");
    let metrics = receiver.metrics.lock().unwrap().clone();
    stop_otlp.cancel();
    for name in ["rpc.server.duration", "winback.messages.sent"] {
        assert!(metrics.iter().any(|m| m == name), "{name} in {metrics:?}");
    }

    let client_span = spans.iter().find(|s| s.name == "campaign_step").unwrap();
    let server_span = spans.iter().find(|s| s.name == SERVER_SPAN).unwrap();
    assert_eq!(
        server_span.trace_id, client_span.trace_id,
        "one call, one trace"
    );
    assert_eq!(
        server_span.parent_span_id, client_span.span_id,
        "the server span is a child of the caller's"
    );
}
