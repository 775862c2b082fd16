//! How an upstream's answer becomes the JSON the merge shapes: one step, the
//! [`Codec`] a backend calls its upstream with, applied where the answer's body has
//! been read (within the attempt, so a codec's failure is the attempt's verdict, as a
//! bad status is). Fan-out, caching and merging only ever see its JSON.
//!
//! Before it, an answer's `content-encoding` (gzip, deflate, br, zstd) is undone by
//! [`decode`], its decoded size held to `max_response_body` and `buffer_capacity`.
//! A gRPC codec (protobuf messages read by their `.proto` types, `grpc-status`
//! judged) is a variant beside [`Codec::Json`]: nothing above this module changes
//! for it.

use bytes::Bytes;
use http::{HeaderMap, header};

use crate::base::coding::{self, DecodeError};
use crate::base::error::Failure;
use crate::state::buffers::Charge;

/// The answer's body with its `content-encoding` undone: no larger than `limit`
/// decoded, and the memory it takes charged to `charge` (503 past
/// `buffer_capacity`). A body that is not what its coding says, or in a coding this
/// gateway does not read, is a bad answer (502).
pub fn decode(
    head: &HeaderMap,
    body: Bytes,
    limit: u64,
    charge: &Charge,
) -> Result<Bytes, Failure> {
    let Some(encoding) = head.get(header::CONTENT_ENCODING) else {
        return Ok(body);
    };
    let Ok(encoding) = encoding.to_str() else {
        return Err(Failure::BadResponse(
            "the answer's content-encoding is not one manifold decodes",
        ));
    };
    let decoded = coding::decode(encoding, body, limit).map_err(|e| match e {
        DecodeError::Unknown => {
            Failure::BadResponse("the answer's content-encoding is not one manifold decodes")
        }
        DecodeError::TooLarge => {
            Failure::BadResponse("the body, decoded, is larger than max_response_body")
        }
        DecodeError::Corrupt => {
            Failure::BadResponse("the body does not decode as its content-encoding says")
        }
    })?;
    let encoded = charge.bytes();
    if !charge.grow(decoded.len() as u64) {
        return Err(Failure::BufferFull);
    }
    // The encoded body is gone once this returns: only the decoded one is held.
    charge.shrink_to(charge.bytes().saturating_sub(encoded));
    Ok(decoded)
}

/// How one backend's answers are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Codec {
    /// The answer is JSON already: passed on as it came (the merge judges it).
    #[default]
    Json,
}

impl Codec {
    /// The answer's body as JSON text, or the failure it is. `head`: the answer's
    /// headers, which a codec may need (its content type, encoding or status).
    #[inline]
    pub fn read(self, head: &HeaderMap, body: Bytes) -> Result<Bytes, Failure> {
        match self {
            Codec::Json => {
                let _ = head;
                Ok(body)
            }
        }
    }

    /// `/routes`'s word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Json => "json",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answers_pass_as_they_came() {
        let body = Bytes::from_static(b"{\"a\": 1}");
        assert_eq!(Codec::Json.read(&HeaderMap::new(), body.clone()), Ok(body));
    }
}
