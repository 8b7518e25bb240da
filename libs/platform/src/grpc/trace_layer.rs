//! Request tracing: one span per call, joined to the caller's trace through the W3C
//! `traceparent` metadata, with the call's duration recorded as a metric.

use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Adds a tracing span and a duration metric to every call.
#[derive(Debug, Clone)]
pub struct TraceLayer {
    duration: Histogram<f64>,
}

impl Default for TraceLayer {
    fn default() -> Self {
        let duration = opentelemetry::global::meter("winback")
            .f64_histogram("rpc.server.duration")
            .with_unit("ms")
            .with_description("duration of gRPC calls")
            .build();
        Self { duration }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService {
            inner,
            duration: self.duration.clone(),
        }
    }
}

/// The tracing service.
#[derive(Debug, Clone)]
pub struct TraceService<S> {
    inner: S,
    duration: Histogram<f64>,
}

impl<S, B, R> Service<http::Request<B>> for TraceService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let parent = crate::telemetry::extract_context(request.headers());
        // Named `Service/Method` as OpenTelemetry's RPC conventions ask.
        let name = method.trim_start_matches('/').to_owned();
        let (service, short) = name.split_once('/').unwrap_or((name.as_str(), ""));
        let span = tracing::info_span!(
            "grpc",
            otel.name = %name,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %short,
            tenant = tracing::field::Empty,
            grpc.status = tracing::field::Empty,
        );
        let _ = span.set_parent(parent);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let duration = self.duration.clone();
        Box::pin(
            async move {
                let started = Instant::now();
                let result = inner.call(request).await;
                let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
                // Trailers-only responses (errors) carry grpc-status in the headers.
                let status = match &result {
                    Ok(resp) => resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("0")
                        .to_owned(),
                    Err(_) => "transport".to_owned(),
                };
                tracing::Span::current().record("grpc.status", status.as_str());
                tracing::debug!(elapsed_ms, status = %status, "call finished");
                duration.record(
                    elapsed_ms,
                    &[
                        KeyValue::new("rpc.method", method),
                        KeyValue::new("rpc.grpc.status_code", status),
                    ],
                );
                result
            }
            .instrument(span),
        )
    }
}
