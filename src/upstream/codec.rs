//! How an upstream's answer becomes the JSON the merge shapes: one step, the
//! [`Codec`] a backend calls its upstream with, applied where the answer's body has
//! been read (within the attempt, so a codec's failure is the attempt's verdict, as a
//! bad status is). Fan-out, caching and merging only ever see its JSON.
//!
//! Today every upstream answers JSON and the step is a pass-through. A gRPC codec
//! (protobuf messages read by their `.proto` types, `grpc-status` judged) and the
//! answer encodings (`content-encoding: gzip` decoded within `max_response_body`)
//! are variants beside [`Codec::Json`]: nothing above this module changes for them.

use bytes::Bytes;
use http::HeaderMap;

use crate::base::error::Failure;

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
