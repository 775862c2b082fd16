//! A tonic codec that hands messages over as bytes: the gRPC test servers (and
//! examples/bench_grpc_upstream.rs, which includes this file) read and write their
//! messages themselves, by descriptors compiled at run time, without generated code.

use bytes::{Buf, BufMut, Bytes};
use tonic::Status;
use tonic::codec::{DecodeBuf, EncodeBuf};

#[derive(Default, Clone)]
pub struct BytesCodec;

impl tonic::codec::Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;
    fn encoder(&mut self) -> BytesCodec {
        BytesCodec
    }
    fn decoder(&mut self) -> BytesCodec {
        BytesCodec
    }
}

impl tonic::codec::Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
