//! How an upstream's answer becomes the JSON the merge shapes: one step, the
//! [`Codec`] a backend calls its upstream with, applied where the answer's body has
//! been read (within the attempt, so a codec's failure is the attempt's verdict, as a
//! bad status is). Fan-out, caching and merging only ever see its JSON.
//!
//! Before it, an answer's `content-encoding` (gzip, deflate, br, zstd) is undone by
//! [`decode`], its decoded size held to `max_response_body` and `buffer_capacity`.
//! The gRPC codec (protobuf messages read by their `.proto` types, `grpc-status`
//! judged) is a variant beside [`Codec::Json`]: nothing above this module changes
//! for it.

use bytes::Bytes;
use http::{HeaderMap, header};

use crate::base::coding::{self, DecodeError};
use crate::base::error::Failure;
use crate::state::buffers::Charge;

/// The answer's body with its `content-encoding` undone: no larger than `limit`
/// decoded, and the memory it takes charged to `charge` as it grows. A body that
/// inflates past either, is not what its coding says, or is in a coding this gateway
/// does not read, is a bad answer (502). An empty body (a 204's) has nothing to undo.
pub fn decode(
    head: &HeaderMap,
    body: Bytes,
    limit: u64,
    charge: &Charge,
) -> Result<Bytes, Failure> {
    let Some(encoding) = head.get(header::CONTENT_ENCODING) else {
        return Ok(body);
    };
    if body.is_empty() {
        return Ok(body);
    }
    let Ok(encoding) = encoding.to_str() else {
        return Err(Failure::BadResponse(
            "the answer's content-encoding is not one manifold decodes",
        ));
    };
    let encoded = charge.bytes();
    let decoded =
        coding::decode(encoding, body, limit, &mut |n| charge.grow(n)).map_err(|e| match e {
            DecodeError::Unknown => {
                Failure::BadResponse("the answer's content-encoding is not one manifold decodes")
            }
            DecodeError::TooLarge => {
                Failure::BadResponse("the body, decoded, is larger than max_response_body")
            }
            DecodeError::NoRoom => {
                Failure::BadResponse("the body, decoded, does not fit in buffer_capacity")
            }
            DecodeError::Corrupt => {
                Failure::BadResponse("the body does not decode as its content-encoding says")
            }
        });
    // What the encoded body and the pieces held is given back: the decoded one is
    // what stays.
    let decoded = match decoded {
        Ok(d) => d,
        Err(f) => {
            charge.shrink_to(encoded);
            return Err(f);
        }
    };
    charge.shrink_to(decoded.len() as u64);
    Ok(decoded)
}

/// How one backend's answers are read.
#[derive(Clone, Debug, Default)]
pub enum Codec {
    /// The answer is JSON already: passed on as it came (the merge judges it).
    #[default]
    Json,
    /// A unary gRPC method's answer: `grpc-status` judged, its message read into
    /// JSON by the proto3 mapping (see [`super::grpc`]).
    Grpc(std::sync::Arc<super::grpc::GrpcMethod>),
}

impl Codec {
    /// The answer's body as JSON text, or the failure it is. `head` and `trailers`:
    /// the answer's headers, which a codec may need (its status, content type,
    /// message encoding); `limit` and `charge` bound what a codec inflates.
    #[inline]
    pub fn read(
        &self,
        head: &HeaderMap,
        trailers: Option<&HeaderMap>,
        body: Bytes,
        limit: u64,
        charge: &Charge,
    ) -> Result<Bytes, Failure> {
        match self {
            Codec::Json => Ok(body),
            Codec::Grpc(method) => method.read(head, trailers, body, limit, charge),
        }
    }

    /// The gRPC method it reads answers of, if it is one.
    pub fn grpc(&self) -> Option<&super::grpc::GrpcMethod> {
        match self {
            Codec::Grpc(m) => Some(m),
            Codec::Json => None,
        }
    }

    /// `/routes`'s word for it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::Grpc(_) => "grpc",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answers_pass_as_they_came() {
        let body = Bytes::from_static(b"{\"a\": 1}");
        let buffers = crate::state::buffers::Buffers::new(1024);
        let charge = buffers.start(None);
        assert_eq!(
            Codec::Json.read(&HeaderMap::new(), None, body.clone(), 1024, &charge),
            Ok(body)
        );
    }
}
