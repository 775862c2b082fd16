//! Content codings (RFC 9110 §8.4.1): their names, the client's `accept-encoding`
//! weighed against the server's list, encoders for answers, and decoders for
//! upstreams' answers that never hold more than a limit.
//!
//! The levels are fixed (docs/operations.md, "Compression: what it costs" has the
//! measurements they were picked from): per request, a higher level buys a few
//! percent of bytes for several times the CPU. A streamed answer's encoder is bounded
//! to 512 KiB (`tests/encoder_memory.rs` measures it).

use std::io::{self, Read, Write};

use bytes::Bytes;

/// A coding manifold compresses with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coding {
    Br,
    Zstd,
    Gzip,
}

impl Coding {
    pub const ALL: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];

    /// The coding's token in `accept-encoding`, `content-encoding` and the config.
    pub const fn as_str(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    /// Its place in [`Coding::ALL`] (per-coding counters are indexed by it).
    pub const fn index(self) -> usize {
        match self {
            Coding::Br => 0,
            Coding::Zstd => 1,
            Coding::Gzip => 2,
        }
    }

    pub fn from_name(name: &str) -> Option<Coding> {
        Coding::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

// Levels (docs/operations.md, "Compression: what it costs", from
// `cargo bench --bench compression`). An answer compressed whole (merged answers,
// errors) is compressed in one call and its encoder dropped at once, so only CPU
// counts; a streamed one keeps its encoder for the stream's life, so its memory counts
// too (at most 512 KiB: `tests/encoder_memory.rs`).
/// Per 20 KB answer: level 3 67 µs for 18.0 % of the bytes; 1: 31 µs, 25.3 %;
/// 6 (zlib's default): 107 µs, 16.8 %.
const GZIP_LEVEL: u32 = 3;
/// Streamed: an 8 KiB window (zlib's default is 32 KiB) takes an encoder from 470
/// to 410 KiB (measured with mimalloc, the binary's allocator).
const GZIP_STREAM_WINDOW_BITS: u8 = 13;
/// q3 with a 256 KiB window: 107 µs, 16.9 %; q5 216 µs, 15.2 %; q11 24 ms.
const BROTLI_QUALITY: u32 = 3;
const BROTLI_WINDOW_LOG: u32 = 18;
/// Streamed: from q2 up brotli's tables alone pass 512 KiB (q2 830 KiB, q4 1.1 MiB,
/// measured); q1 holds 270 KiB.
const BROTLI_STREAM_QUALITY: u32 = 1;
const BROTLI_STREAM_WINDOW_LOG: u32 = 18;
/// Level 1: 33 µs, 16.6 % (level 3 compressed these answers less, 42 µs, 16.9 %).
const ZSTD_LEVEL: i32 = 1;
/// Streamed: the window and tables cut to 64 KiB / 2^15 entries (the defaults take
/// several MiB).
const ZSTD_STREAM_WINDOW_LOG: u32 = 16;
const ZSTD_STREAM_HASH_LOG: u32 = 15;
const ZSTD_STREAM_CHAIN_LOG: u32 = 15;

/// The coding to answer with: among `server`'s (in its order of preference) those the
/// client's `accept-encoding` values accept (RFC 9110 §12.5.3: a coding's own q-value,
/// else `*`'s; q=0 refuses), the one with the highest q, the server's first on a tie.
/// `None`: send it uncompressed (no header, only `identity`, nothing acceptable).
pub fn negotiate<'v>(accept: impl Iterator<Item = &'v [u8]>, server: &[Coding]) -> Option<Coding> {
    // q in thousandths; `None`: the client did not name it.
    let mut named: [Option<u16>; 3] = [None; 3];
    let mut star: Option<u16> = None;
    for value in accept {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            if name.is_empty() {
                continue;
            }
            let mut q = Some(1000);
            for param in parts {
                let Some((k, v)) = param.split_once('=') else {
                    continue;
                };
                if k.trim().eq_ignore_ascii_case("q") {
                    q = qvalue(v.trim());
                }
            }
            // A malformed q-value makes the item meaningless: ignored, as if unsent.
            let Some(q) = q else { continue };
            if name == "*" {
                star = Some(q);
            } else if let Some(c) = Coding::ALL.into_iter().find(|c| {
                name.eq_ignore_ascii_case(c.as_str())
                    || (*c == Coding::Gzip && name.eq_ignore_ascii_case("x-gzip"))
            }) {
                named[c.index()] = Some(q);
            }
        }
    }
    let mut best: Option<(Coding, u16)> = None;
    for &c in server {
        let q = named[c.index()].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((c, q));
        }
    }
    best.map(|(c, _)| c)
}

/// An RFC 9110 §12.4.2 qvalue in thousandths: `0`, `1`, `0.5`, `1.000`.
fn qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// One answer's encoder: bytes in, compressed bytes out as they are ready.
pub enum Encoder {
    /// zlib in gzip mode: its framing (header, CRC trailer) written by zlib itself.
    Gzip(flate2::write::ZlibEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// An encoder for a streamed answer: its memory bounded (see the levels above).
    pub fn streaming(coding: Coding) -> io::Result<Encoder> {
        Ok(match coding {
            Coding::Gzip => Encoder::Gzip(flate2::write::ZlibEncoder::new_with_compress(
                Vec::new(),
                flate2::Compress::new_gzip(
                    flate2::Compression::new(GZIP_LEVEL),
                    GZIP_STREAM_WINDOW_BITS,
                ),
            )),
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                BROTLI_STREAM_QUALITY,
                BROTLI_STREAM_WINDOW_LOG,
            ))),
            Coding::Zstd => {
                use zstd::zstd_safe::CParameter;
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
                e.window_log(ZSTD_STREAM_WINDOW_LOG)?;
                e.set_parameter(CParameter::HashLog(ZSTD_STREAM_HASH_LOG))?;
                e.set_parameter(CParameter::ChainLog(ZSTD_STREAM_CHAIN_LOG))?;
                Encoder::Zstd(e)
            }
        })
    }

    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Br(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    /// What is compressed so far, flushed so the client can decode all it was sent.
    pub fn flush(&mut self) -> io::Result<Bytes> {
        match self {
            Encoder::Gzip(e) => e.flush()?,
            Encoder::Br(e) => e.flush()?,
            Encoder::Zstd(e) => e.flush()?,
        }
        Ok(self.take())
    }

    /// The rest, and the coding's end (trailer, last block).
    pub fn finish(self) -> io::Result<Bytes> {
        let out = match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Br(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        };
        Ok(Bytes::from(out))
    }

    fn take(&mut self) -> Bytes {
        let out = match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Br(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        };
        Bytes::from(std::mem::take(out))
    }
}

/// `body` compressed whole, in one call: the encoder lives only for it.
pub fn encode(coding: Coding, body: &[u8]) -> io::Result<Bytes> {
    let out = match coding {
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::new(GZIP_LEVEL),
            );
            e.write_all(body)?;
            e.finish()?
        }
        Coding::Br => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: BROTLI_QUALITY as i32,
                lgwin: BROTLI_WINDOW_LOG as i32,
                // Lets the encoder size its window and tables to the body.
                size_hint: body.len(),
                ..Default::default()
            };
            let mut out = Vec::with_capacity(body.len() / 4);
            brotli::BrotliCompress(&mut &body[..], &mut out, &params)?;
            out
        }
        // The body's size is known, so zstd picks a window no larger than it.
        Coding::Zstd => zstd::bulk::compress(body, ZSTD_LEVEL)?,
    };
    Ok(Bytes::from(out))
}

/// Why an upstream's encoded body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A coding this gateway does not decode.
    Unknown,
    /// Decoded, it passes the limit.
    TooLarge,
    /// Decoded, it does not fit in the room it was given (`buffer_capacity`).
    NoRoom,
    /// Not what its coding says.
    Corrupt,
}

/// The zstd window a decoder accepts at most (8 MiB: RFC 8878 §3.1.1.1.2's advice to
/// decoders); a frame asking for more is refused instead of taking the memory.
const ZSTD_MAX_WINDOW_LOG: u32 = 23;

/// Room for decoded bytes: asked for each growth of the output, `false` when there is
/// none (the caller's `buffer_capacity`).
pub type Room<'a> = &'a mut dyn FnMut(u64) -> bool;

/// `body` decoded as `content-encoding` says (codings applied in order, RFC 9110
/// §8.4), its output read in pieces: past `limit` bytes, or past the `room` it is
/// given, it stops there, so a bomb is refused as it inflates, never held.
pub fn decode(
    content_encoding: &str,
    body: Bytes,
    limit: u64,
    room: Room<'_>,
) -> Result<Bytes, DecodeError> {
    let mut body = body;
    // Listed in the order applied: undone last first.
    for name in content_encoding.rsplit(',') {
        let name = name.trim();
        if name.is_empty() || name.eq_ignore_ascii_case("identity") {
            continue;
        }
        body = decode_one(name, &body, limit, room)?;
    }
    Ok(body)
}

fn decode_one(name: &str, body: &[u8], limit: u64, room: Room<'_>) -> Result<Bytes, DecodeError> {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "gzip" | "x-gzip" => read_bounded(flate2::read::MultiGzDecoder::new(body), limit, room),
        // HTTP's `deflate` is the zlib format (RFC 9110 §8.4.1.2); some servers send raw
        // deflate instead, which browsers accept too.
        "deflate" => match read_bounded(flate2::read::ZlibDecoder::new(body), limit, room) {
            Err(DecodeError::Corrupt) => {
                read_bounded(flate2::read::DeflateDecoder::new(body), limit, room)
            }
            other => other,
        },
        "br" => read_bounded(brotli::Decompressor::new(body, 4096), limit, room),
        "zstd" => {
            let mut d = zstd::stream::read::Decoder::new(body).map_err(|_| DecodeError::Corrupt)?;
            d.window_log_max(ZSTD_MAX_WINDOW_LOG)
                .map_err(|_| DecodeError::Corrupt)?;
            read_bounded(d, limit, room)
        }
        _ => Err(DecodeError::Unknown),
    }
}

fn read_bounded(mut reader: impl Read, limit: u64, room: Room<'_>) -> Result<Bytes, DecodeError> {
    let mut out: Vec<u8> = Vec::new();
    let mut piece = [0u8; 16 << 10];
    loop {
        let n = match reader.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(DecodeError::Corrupt),
        };
        if (out.len() + n) as u64 > limit {
            return Err(DecodeError::TooLarge);
        }
        let before = out.capacity();
        out.extend_from_slice(&piece[..n]);
        if out.capacity() > before && !room((out.capacity() - before) as u64) {
            return Err(DecodeError::NoRoom);
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(accept: &str, server: &[Coding]) -> Option<Coding> {
        negotiate(std::iter::once(accept.as_bytes()), server)
    }

    const ALL: &[Coding] = &[Coding::Br, Coding::Zstd, Coding::Gzip];

    #[test]
    fn negotiation_follows_q_values_and_the_servers_order() {
        assert_eq!(pick("gzip, deflate, br, zstd", ALL), Some(Coding::Br));
        assert_eq!(pick("gzip", ALL), Some(Coding::Gzip));
        assert_eq!(pick("GZip", ALL), Some(Coding::Gzip));
        assert_eq!(pick("x-gzip", ALL), Some(Coding::Gzip));
        assert_eq!(pick("br;q=0.5, gzip;q=0.8", ALL), Some(Coding::Gzip));
        assert_eq!(pick("br;q=0.8, gzip;q=0.8", ALL), Some(Coding::Br));
        assert_eq!(
            pick("gzip, br", &[Coding::Gzip, Coding::Br]),
            Some(Coding::Gzip)
        );
        assert_eq!(pick("*", ALL), Some(Coding::Br));
        assert_eq!(pick("*;q=0.5, br;q=0", ALL), Some(Coding::Zstd));
        assert_eq!(pick("br;q=0, *", ALL), Some(Coding::Zstd));
        assert_eq!(pick("identity", ALL), None);
        assert_eq!(pick("identity;q=0", ALL), None);
        assert_eq!(pick("", ALL), None);
        assert_eq!(pick("gzip;q=0", ALL), None);
        assert_eq!(pick("*;q=0", ALL), None);
        assert_eq!(pick("deflate", ALL), None);
        assert_eq!(pick("gzip;q=0.001", ALL), Some(Coding::Gzip));
        assert_eq!(pick("zstd", &[Coding::Gzip]), None);
        // Malformed q-values: the item is ignored.
        assert_eq!(pick("br;q=2, gzip", ALL), Some(Coding::Gzip));
        assert_eq!(pick("br;q=0.5555", ALL), None);
        assert_eq!(pick("br;q=abc", ALL), None);
        // Several header lines count together.
        let lines: [&[u8]; 2] = [b"br;q=0.1", b"gzip"];
        assert_eq!(negotiate(lines.into_iter(), ALL), Some(Coding::Gzip));
        // Bytes that are not text are skipped, never a panic.
        let lines: [&[u8]; 2] = [b"\xff\xfe", b"zstd"];
        assert_eq!(negotiate(lines.into_iter(), ALL), Some(Coding::Zstd));
    }

    proptest::proptest! {
        /// Whatever a client sends: no panic, and an answer only from the server's list
        /// that the client did not refuse by name.
        #[test]
        fn negotiation_takes_any_header(value in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let server = [Coding::Gzip, Coding::Zstd];
            if let Some(c) = negotiate(std::iter::once(&value[..]), &server) {
                proptest::prop_assert!(server.contains(&c));
                let text = String::from_utf8_lossy(&value).to_ascii_lowercase();
                let refused = format!("{};q=0", c.as_str());
                proptest::prop_assert!(!text.replace(' ', "").split(',').any(|i| i == refused));
            }
        }

        /// Whatever an upstream sends as an encoded body: no panic, never more than the
        /// limit.
        #[test]
        fn decoding_takes_any_body(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
            coding in proptest::sample::select(vec!["gzip", "deflate", "br", "zstd", "gzip, br", "x"]),
        ) {
            if let Ok(out) = decode(coding, Bytes::from(body), 1024, &mut |_| true) {
                proptest::prop_assert!(out.len() <= 1024);
            }
        }
    }

    #[test]
    fn qvalues() {
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1.000"), Some(1000));
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("0.05"), Some(50));
        assert_eq!(qvalue("0"), Some(0));
        assert_eq!(qvalue("1.5"), None);
        assert_eq!(qvalue("2"), None);
        assert_eq!(qvalue("0.1234"), None);
    }

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::from("[");
        for i in 0..n {
            s.push_str(&format!(
                "{{\"id\":{i},\"name\":\"user {i}\",\"email\":\"u{i}@example.com\",\"score\":{}}},",
                i * 7 % 1000
            ));
        }
        s.push_str("{}]");
        s.into_bytes()
    }

    #[test]
    fn each_coding_round_trips_whole_and_streamed() {
        let body = json(2000);
        for c in Coding::ALL {
            let whole = encode(c, &body).unwrap();
            assert!(whole.len() < body.len() / 4, "{c:?}: {}", whole.len());
            let back = decode(c.as_str(), whole, 1 << 30, &mut |_| true).unwrap();
            assert_eq!(&back[..], &body[..], "{c:?}");
            // Streamed: each flush is decodable up to what was written.
            let mut e = Encoder::streaming(c).unwrap();
            let mut out = Vec::new();
            for piece in body.chunks(3000) {
                e.write(piece).unwrap();
                out.extend_from_slice(&e.flush().unwrap());
            }
            out.extend_from_slice(&e.finish().unwrap());
            let back = decode(c.as_str(), Bytes::from(out), 1 << 30, &mut |_| true).unwrap();
            assert_eq!(&back[..], &body[..], "{c:?} streamed");
        }
    }

    #[test]
    fn decoding_stops_at_the_limit() {
        // 64 MiB of zeros: a few KiB encoded.
        let zeros = vec![0u8; 64 << 20];
        for c in Coding::ALL {
            let bomb = encode(c, &zeros).unwrap();
            assert!(bomb.len() < 100 << 10);
            assert_eq!(
                decode(c.as_str(), bomb.clone(), 1 << 20, &mut |_| true),
                Err(DecodeError::TooLarge)
            );
            // Room runs out before the limit: refused as it grows.
            let mut given = 0;
            let mut room = |n: u64| {
                given += n;
                given <= 2 << 20
            };
            assert_eq!(
                decode(c.as_str(), bomb.clone(), 64 << 20, &mut room),
                Err(DecodeError::NoRoom)
            );
            assert!(given <= 6 << 20, "{given}");
            assert_eq!(
                decode(c.as_str(), bomb, 64 << 20, &mut |_| true).map(|b| b.len()),
                Ok(64 << 20)
            );
        }
    }

    #[test]
    fn deflate_zlib_and_raw_and_layered_and_unknown() {
        let body = json(50);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&body).unwrap();
        let zlib = Bytes::from(z.finish().unwrap());
        assert_eq!(
            decode("deflate", zlib, 1 << 20, &mut |_| true).unwrap(),
            body
        );
        let mut r = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        r.write_all(&body).unwrap();
        let raw = Bytes::from(r.finish().unwrap());
        assert_eq!(
            decode("deflate", raw, 1 << 20, &mut |_| true).unwrap(),
            body
        );
        // gzip applied, then br: `content-encoding: gzip, br`.
        let layered = encode(Coding::Br, &encode(Coding::Gzip, &body).unwrap()).unwrap();
        assert_eq!(
            decode("gzip, br", layered, 1 << 20, &mut |_| true).unwrap(),
            body
        );
        assert_eq!(
            decode("compress", Bytes::from_static(b"x"), 10, &mut |_| true),
            Err(DecodeError::Unknown)
        );
        assert_eq!(
            decode("gzip", Bytes::from_static(b"not gzip"), 10, &mut |_| true),
            Err(DecodeError::Corrupt)
        );
        assert_eq!(
            decode("identity", Bytes::from_static(b"as is"), 10, &mut |_| true).unwrap(),
            "as is"
        );
    }
}
