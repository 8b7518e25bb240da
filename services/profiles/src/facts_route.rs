//! The route in front of the generated profiles server: `StreamFacts` is served from the
//! stored encoded facts as they are — each chunk is written straight into the wire format
//! of `StreamFactsResponse` — instead of decoding a million messages only to encode them
//! again. Every other method goes to the generated server.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use futures::future::BoxFuture;
use prost::encoding::{DecodeContext, WireType};
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::server::{NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};
use tower::Service;
use winback_platform::auth::tenant_for;
use winback_proto::profiles::StreamFactsRequest;

use crate::context::Profiles;

const STREAM_FACTS: &str = "/winback.profiles.v1.ProfilesService/StreamFacts";

/// A `StreamFactsResponse` already encoded: `facts` entries (field 1) and the `cursor`
/// (field 2). Only ever encoded, never decoded.
#[derive(Debug, Default, Clone)]
pub(crate) struct EncodedChunk(pub(crate) Bytes);

impl EncodedChunk {
    /// Builds a chunk from `facts` entries as stored (framed, see
    /// [`crate::facts_frame::framed_facts`]) and the cursor.
    pub(crate) fn from_framed(entries: &[u8], cursor: &str) -> Self {
        let mut buf = bytes::BytesMut::with_capacity(entries.len() + cursor.len() + 8);
        buf.put_slice(entries);
        prost::encoding::string::encode(2, &cursor.to_owned(), &mut buf);
        Self(buf.freeze())
    }
}

impl prost::Message for EncodedChunk {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

#[derive(Debug, Clone)]
struct RawFacts {
    profiles: Profiles,
}

impl ServerStreamingService<StreamFactsRequest> for RawFacts {
    type Response = EncodedChunk;
    type ResponseStream = ReceiverStream<Result<EncodedChunk, Status>>;
    type Future = BoxFuture<'static, Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<StreamFactsRequest>) -> Self::Future {
        let profiles = self.profiles.clone();
        Box::pin(async move {
            let tenant = tenant_for(&request, "profiles:read")?;
            let req = request.into_inner();
            let rx = profiles.stream_facts(
                tenant,
                &req.changed_since_cursor,
                req.chunk_size,
                req.as_of.as_ref(),
            )?;
            Ok(Response::new(ReceiverStream::new(rx)))
        })
    }
}

/// The generated server, with `StreamFacts` taken over.
#[derive(Debug, Clone)]
pub(crate) struct ProfilesRoute<S> {
    pub(crate) generated: S,
    pub(crate) profiles: Profiles,
    pub(crate) max_message_bytes: usize,
}

impl<S> NamedService for ProfilesRoute<S> {
    const NAME: &'static str = winback_proto::service_names::PROFILES;
}

impl<S> Service<http::Request<Body>> for ProfilesRoute<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.generated.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != STREAM_FACTS {
            return Box::pin(self.generated.call(request));
        }
        let service = RawFacts {
            profiles: self.profiles.clone(),
        };
        let limit = self.max_message_bytes;
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<EncodedChunk, StreamFactsRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_max_message_size_config(Some(limit), Some(limit));
            Ok(grpc.server_streaming(service, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use winback_proto::profiles::{CustomerFacts, StreamFactsResponse};

    use super::*;

    #[test]
    fn an_encoded_chunk_is_a_stream_facts_response_on_the_wire() {
        let framed: Vec<u8> = ["c1", "c2"]
            .iter()
            .flat_map(|id| {
                crate::facts_frame::framed_facts(&CustomerFacts {
                    customer_id: (*id).into(),
                    order_count: 3,
                    ..Default::default()
                })
            })
            .collect();
        let chunk = EncodedChunk::from_framed(&framed, "0.42");
        let decoded = StreamFactsResponse::decode(chunk.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.cursor, "0.42");
        assert_eq!(decoded.facts.len(), 2);
        assert_eq!(decoded.facts[1].customer_id, "c2");
        assert_eq!(decoded.facts[1].order_count, 3);
    }
}
