//! Deadlines. A call gets the configured request timeout, or the caller's shorter
//! `grpc-timeout`; a call whose *request* is a stream (an import) gets only the caller's
//! own deadline, since its length is the caller's to decide. A server stream is not cut:
//! its response starts at once. A call past its deadline ends with `DEADLINE_EXCEEDED`.

use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use prost::Message;
use tonic::Status;
use tower::{Layer, Service};

/// Paths (`/package.Service/Method`) of client- and bidi-streaming methods in the
/// encoded descriptor sets.
pub fn client_streaming_paths(descriptor_sets: &[&[u8]]) -> HashSet<String> {
    let mut paths = HashSet::new();
    for bytes in descriptor_sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*bytes) else {
            continue;
        };
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    if method.client_streaming() {
                        paths.insert(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
    }
    paths
}

/// The `grpc-timeout` header value as a duration (`100m` = 100 ms).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Applies deadlines.
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    default: Duration,
    streaming_requests: Arc<HashSet<String>>,
}

impl DeadlineLayer {
    /// `default` for ordinary calls; `streaming_requests` get only the caller's deadline.
    pub fn new(default: Duration, streaming_requests: HashSet<String>) -> Self {
        Self {
            default,
            streaming_requests: Arc::new(streaming_requests),
        }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The deadline service.
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    layer: DeadlineLayer,
}

impl<S, B> Service<http::Request<B>> for DeadlineService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
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
        let asked = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let deadline = if self.layer.streaming_requests.contains(request.uri().path()) {
            asked
        } else {
            Some(asked.map_or(self.layer.default, |a| a.min(self.layer.default)))
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            match deadline {
                None => inner.call(request).await,
                Some(limit) => match tokio::time::timeout(limit, inner.call(request)).await {
                    Ok(result) => result,
                    Err(_) => Ok(Status::deadline_exceeded("deadline exceeded").into_http()),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_parse() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn client_streaming_methods_are_found_in_the_contracts() {
        let paths = client_streaming_paths(&[winback_proto::FILE_DESCRIPTOR_SET]);
        assert!(paths.contains("/winback.profiles.v1.ProfilesService/StreamOrders"));
        assert!(
            !paths.contains("/winback.profiles.v1.ProfilesService/StreamFacts"),
            "server streams are not"
        );
        assert!(!paths.contains("/winback.profiles.v1.ProfilesService/RecordOrders"));
    }
}
