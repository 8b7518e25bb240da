//! The tower layer that authenticates every call except health and reflection, checks the
//! scope the method needs, counts the call against the tenant's quota, and hands the [`AuthContext`](crate::auth::AuthContext) to the
//! handlers through the request extensions.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use tower::{Layer, Service};

use crate::auth::{TENANT_HEADER, TokenVerifier, required_scope};
use crate::quotas::Quotas;

/// Paths served without a token.
const OPEN_PREFIXES: &[&str] = &["/grpc.health.v1.", "/grpc.reflection."];

/// Adds authentication to a service.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: Arc<TokenVerifier>,
    quotas: Quotas,
}

impl AuthLayer {
    /// A layer verifying tokens with `verifier` and limiting tenants by `quotas`.
    pub fn new(verifier: Arc<TokenVerifier>, quotas: Quotas) -> Self {
        Self { verifier, quotas }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            verifier: self.verifier.clone(),
            quotas: self.quotas.clone(),
        }
    }
}

/// The authenticating service.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    verifier: Arc<TokenVerifier>,
    quotas: Quotas,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
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

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        if OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Box::pin(self.inner.call(request));
        }
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        let ctx = match self.verifier.authenticate(
            header(http::header::AUTHORIZATION.as_str()),
            header(TENANT_HEADER),
        ) {
            Ok(ctx) => ctx,
            Err(err) => {
                let status = Status::unauthenticated(err.to_string());
                return Box::pin(async move { Ok(status.into_http()) });
            }
        };
        if let Some(scope) = required_scope(&path)
            && !(ctx.has_scope(&scope) || ctx.is_service())
        {
            let status = Status::permission_denied(format!("token lacks scope {scope}"));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        if let Some(tenant) = &ctx.tenant {
            tracing::Span::current().record("tenant", tenant.as_str());
            if !ctx.is_service()
                && let Err(exceeded) = self.quotas.check_call(tenant)
            {
                let status = Status::from(exceeded);
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        request.extensions_mut().insert(ctx);
        // The clone that was made ready is the one to call; keep a fresh clone for next time.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { inner.call(request).await })
    }
}
