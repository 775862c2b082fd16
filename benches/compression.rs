//! What compressing an answer costs and saves, per coding and level, on JSON of the
//! shape merged answers have (2 KB, 20 KB, 200 KB): the figures the levels in
//! `src/base/coding.rs` were picked from (docs/operations.md, "Compression: what it
//! costs"). CPU per answer is the median of repeated single-threaded runs.
//!
//!     cargo bench --bench compression

use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

use tokio::time::Instant;

use manifold::base::coding::{self, Coding};

/// A merged answer's kind of JSON: objects of ids, names, dates, flags and prose, some
/// values repeated across items as real lists are.
fn answer(bytes: usize) -> Vec<u8> {
    let mut s = String::from(
        "{\"user\":{\"id\":42,\"name\":\"Ada Lovelace\",\"plan\":\"pro\"},\"orders\":[",
    );
    let mut i: u64 = 7;
    let mut n = 0;
    while s.len() < bytes - 40 {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let status = ["shipped", "pending", "delivered", "cancelled"][(i >> 33) as usize % 4];
        s.push_str(&format!(
            "{{\"id\":{},\"sku\":\"SKU-{:06}\",\"status\":\"{status}\",\"total\":{}.{:02},\"created\":\"2026-{:02}-{:02}T{:02}:{:02}:00Z\",\"gift\":{},\"note\":\"{}\"}},",
            100_000 + n,
            (i >> 20) % 1_000_000,
            (i >> 12) % 500,
            (i >> 5) % 100,
            1 + (i >> 40) % 12,
            1 + (i >> 44) % 28,
            (i >> 48) % 24,
            (i >> 52) % 60,
            (i >> 60).is_multiple_of(2),
            ["leave at the door", "", "call before delivery", "fragile"][(i >> 30) as usize % 4]
        ));
        n += 1;
    }
    s.push_str("{}]}");
    s.into_bytes()
}

fn median(mut f: impl FnMut() -> usize, budget: Duration) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut out = 0;
    let started = Instant::now();
    while times.len() < 5 || (started.elapsed() < budget && times.len() < 2000) {
        let t = Instant::now();
        out = black_box(f());
        times.push(t.elapsed());
    }
    times.sort();
    (times[times.len() / 2], out)
}

fn gzip(level: u32, body: &[u8]) -> usize {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(body).unwrap();
    e.finish().unwrap().len()
}

fn br(quality: u32, lgwin: u32, body: &[u8]) -> usize {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams {
        quality: quality as i32,
        lgwin: lgwin as i32,
        size_hint: body.len(),
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &body[..], &mut out, &params).unwrap();
    out.len()
}

fn zstd(level: i32, body: &[u8]) -> usize {
    zstd::bulk::compress(body, level).unwrap().len()
}

fn main() {
    let budget = Duration::from_millis(400);
    println!("| size | coding | level | µs per answer | bytes out | of identity |");
    println!("|---|---|---|---:|---:|---:|");
    for size in [2_000, 20_000, 200_000] {
        let body = answer(size);
        let row = |coding: &str, level: String, (t, out): (Duration, usize)| {
            println!(
                "| {} KB | {coding} | {level} | {:.1} | {out} | {:.1} % |",
                size / 1000,
                t.as_secs_f64() * 1e6,
                100.0 * out as f64 / body.len() as f64
            );
        };
        for level in [1, 2, 3, 4, 6, 9] {
            row(
                "gzip",
                level.to_string(),
                median(|| gzip(level, &body), budget),
            );
        }
        for q in [1, 2, 3, 4, 5, 6, 9, 11] {
            row("br", q.to_string(), median(|| br(q, 22, &body), budget));
        }
        for q in [2, 3, 4, 5] {
            row(
                "br",
                format!("{q}, window 2^18"),
                median(|| br(q, 18, &body), budget),
            );
        }
        for level in [1, 2, 3, 6, 9, 19] {
            row(
                "zstd",
                level.to_string(),
                median(|| zstd(level, &body), budget),
            );
        }
        for c in Coding::ALL {
            row(
                c.as_str(),
                "manifold (buffered)".into(),
                median(|| coding::encode(c, &body).unwrap().len(), budget),
            );
            row(
                c.as_str(),
                "manifold (streamed, 16 KiB pieces)".into(),
                median(
                    || {
                        let mut e = coding::Encoder::streaming(c).unwrap();
                        let mut n = 0;
                        for piece in body.chunks(16 << 10) {
                            e.write(piece).unwrap();
                            n += e.flush().unwrap().len();
                        }
                        n + e.finish().unwrap().len()
                    },
                    budget,
                ),
            );
        }
    }
}
