//! The client side of service-to-service calls: bearer token, the tenant acted for, and
//! the W3C trace context, added to every outgoing call.

use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::auth::TENANT_HEADER;

/// Credentials and trace context for outgoing calls.
#[derive(Clone, Default)]
pub struct CallCredentials {
    authorization: Option<AsciiMetadataValue>,
    tenant: Option<AsciiMetadataValue>,
}

impl std::fmt::Debug for CallCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallCredentials")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl CallCredentials {
    /// Calls carrying `token`.
    pub fn bearer(token: &str) -> Result<Self, Status> {
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Status::invalid_argument("token is not valid metadata"))?;
        Ok(Self {
            authorization: Some(value),
            tenant: None,
        })
    }

    /// The same credentials acting for `tenant` (service tokens).
    pub fn for_tenant(&self, tenant: &str) -> Result<Self, Status> {
        let value = MetadataValue::try_from(tenant)
            .map_err(|_| Status::invalid_argument("tenant is not valid metadata"))?;
        Ok(Self {
            authorization: self.authorization.clone(),
            tenant: Some(value),
        })
    }
}

impl Interceptor for CallCredentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(auth) = &self.authorization {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        if let Some(tenant) = &self.tenant {
            request.metadata_mut().insert(TENANT_HEADER, tenant.clone());
        }
        crate::telemetry::inject_context(request.metadata_mut());
        Ok(request)
    }
}

/// A channel to `url` that connects on first use and reconnects by itself.
pub fn lazy_channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy())
}
