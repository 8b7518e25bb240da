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
    /// [`crate::store::rows::framed_facts`]) and the cursor.
    pub(crate) fn from_framed(entries: &[u8], cursor: &str) -> Self {
        let mut buf = bytes::BytesMut::with_capacity(entries.len() + cursor.len() + 8);
        buf.put_slice(entries);
        prost::encoding::string::encode(2, &cursor.to_owned(), &mut buf);
        Self(buf.freeze())
    }
}

/// Whether the framed `facts` entries are in strictly ascending customer id order, all
/// after `after` (a `CustomerFacts` is encoded with its `customer_id`, field 1, first).
pub(crate) fn ids_ascend(mut framed: &[u8], after: &str) -> bool {
    let mut previous = after.as_bytes();
    while !framed.is_empty() {
        let Some(entry) = next_entry(&mut framed) else {
            return false;
        };
        let id = match entry.split_first() {
            Some((&0x0A, rest)) => {
                let mut rest = rest;
                match prost::encoding::decode_varint(&mut rest)
                    .ok()
                    .and_then(|n| usize::try_from(n).ok())
                    .and_then(|n| rest.get(..n))
                {
                    Some(id) => id,
                    None => return false,
                }
            }
            // An empty customer id is not encoded at all.
            _ => &[],
        };
        if id <= previous {
            return false;
        }
        previous = id;
    }
    true
}

/// The next framed entry's message, advancing `framed` past it.
pub(crate) fn next_entry<'a>(framed: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (&key, mut rest) = framed.split_first()?;
    if key != 0x0A {
        return None;
    }
    let len = usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?;
    let entry = rest.get(..len)?;
    *framed = rest.get(len..)?;
    Some(entry)
}

/// Splits framed `facts` entries into runs of `per_chunk` entries (the last may be
/// shorter), walking each entry's key and length; `None` if the bytes are not whole
/// entries of field 1.
pub(crate) fn split_framed(mut framed: &[u8], per_chunk: usize) -> Option<Vec<&[u8]>> {
    let mut runs = Vec::new();
    while !framed.is_empty() {
        let mut rest = framed;
        let mut entries = 0;
        while entries < per_chunk.max(1) && !rest.is_empty() {
            next_entry(&mut rest)?;
            entries += 1;
        }
        let (run, tail) = framed.split_at(framed.len() - rest.len());
        runs.push(run);
        framed = tail;
    }
    Some(runs)
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
            let rx = profiles.stream_facts(tenant, &req.changed_since_cursor, req.chunk_size)?;
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
    fn framed_entries_split_into_chunks_that_decode_as_responses() {
        let framed: Vec<u8> = (0..7)
            .flat_map(|i| {
                crate::store::rows::framed_facts(&CustomerFacts {
                    customer_id: format!("c{i}"),
                    // One entry longer than 127 bytes: a two-byte length.
                    top_categories: vec!["t".repeat(if i == 3 { 300 } else { 1 })],
                    ..Default::default()
                })
            })
            .collect();
        let runs = split_framed(&framed, 3).expect("whole entries");
        assert_eq!(runs.len(), 3);
        let decoded: Vec<Vec<String>> = runs
            .iter()
            .map(|run| {
                let chunk = EncodedChunk::from_framed(run, "0.7");
                let response = StreamFactsResponse::decode(chunk.0).unwrap();
                assert_eq!(response.cursor, "0.7");
                response.facts.into_iter().map(|f| f.customer_id).collect()
            })
            .collect();
        assert_eq!(
            decoded,
            vec![vec!["c0", "c1", "c2"], vec!["c3", "c4", "c5"], vec!["c6"]]
        );
        assert!(ids_ascend(&framed, ""));
        assert!(ids_ascend(&framed, "b"));
        assert!(!ids_ascend(&framed, "c0"), "not after the page before");
        let mut swapped = Vec::new();
        for run in [runs[1], runs[0]] {
            swapped.extend_from_slice(run);
        }
        assert!(!ids_ascend(&swapped, ""));
        assert_eq!(split_framed(&[0x12, 0x00], 3), None, "not field 1");
        assert_eq!(split_framed(&[0x0A, 0x05, 0x00], 3), None, "cut short");
        assert_eq!(split_framed(&[], 3), Some(Vec::new()));
    }

    #[test]
    fn an_encoded_chunk_is_a_stream_facts_response_on_the_wire() {
        let framed: Vec<u8> = ["c1", "c2"]
            .iter()
            .flat_map(|id| {
                crate::store::rows::framed_facts(&CustomerFacts {
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
