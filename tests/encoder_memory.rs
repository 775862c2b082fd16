//! A streamed answer's encoder holds at most 512 KiB (docs/configuration.md#compression),
//! so 1,000 compressed streams stay within the bounds of "Abuse and limits".
//!
//! Measured as the process sees it: the resident memory 100 live encoders add, each
//! having compressed 512 KiB in 16 KiB pieces with a flush every 64 KiB (as a
//! passthrough stream does when its upstream sends faster than the client reads).
//! Resident memory counts zstd's own C allocations too, which an allocator hook would
//! miss. Each coding is measured in a fresh process (this test
//! binary run again), so memory freed by one cannot hide another's.

use manifold::base::coding::{Coding, Encoder};

// The allocator the binary uses: its size classes are part of what an encoder costs.
#[global_allocator]
static GLOBAL: manifold::base::alloc::Allocator = manifold::base::alloc::Allocator;

const ENCODERS: usize = 100;
const LIMIT: usize = 512 << 10;

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    pages * page
}

/// Text that compresses like JSON does, but not to nothing.
fn piece(seed: usize) -> Vec<u8> {
    let mut s = String::with_capacity(16 << 10);
    let mut i = seed;
    while s.len() < 16 << 10 {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.push_str(&format!(
            "{{\"id\":{},\"name\":\"user {}\",\"score\":{}}},",
            i % 100_000,
            (i >> 20) % 5000,
            (i >> 40) % 1000
        ));
    }
    s.into_bytes()
}

fn measure(coding: Coding) -> usize {
    let pieces: Vec<Vec<u8>> = (0..32).map(piece).collect();
    let before = resident_bytes();
    let mut live = Vec::with_capacity(ENCODERS);
    for n in 0..ENCODERS {
        let mut e = Encoder::streaming(coding).unwrap();
        // As a stream goes (request/wire.rs): 16 KiB frames, a flush every 64 KiB.
        for (i, p) in pieces.iter().cycle().skip(n % 32).take(32).enumerate() {
            e.write(p).unwrap();
            if i % 4 == 3 {
                drop(e.flush().unwrap());
            }
        }
        live.push(e);
    }
    let per = resident_bytes().saturating_sub(before) / ENCODERS;
    drop(live);
    per
}

#[test]
fn each_streamed_encoder_holds_at_most_512_kib() {
    if let Ok(name) = std::env::var("MANIFOLD_MEASURE_CODING") {
        let coding = Coding::from_name(&name).unwrap();
        println!("per-encoder={}", measure(coding));
        return;
    }
    for coding in Coding::ALL {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "each_streamed_encoder_holds_at_most_512_kib",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MANIFOLD_MEASURE_CODING", coding.as_str())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let per: usize = text
            .lines()
            .find_map(|l| l.split_once("per-encoder=").map(|(_, n)| n))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{coding:?}: no figure in {text}"));
        println!(
            "{}: {} KiB per streamed encoder",
            coding.as_str(),
            per >> 10
        );
        assert!(
            per <= LIMIT,
            "{coding:?}: {} KiB per encoder, over 512 KiB",
            per >> 10
        );
        // A measurement that saw nothing would pass any bound.
        assert!(
            per >= 16 << 10,
            "{coding:?}: {per} bytes: nothing measured?"
        );
    }
}
