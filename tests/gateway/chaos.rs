//! Chaos: an upstream that turns slow, dead, failing and lying in turn, under steady
//! load. Every answer must arrive within the route deadline plus 50 ms, with a status
//! from the contract, and the breaker must follow what the upstream does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::support::{Gateway, upstream};

const OK: u8 = 0;
const SLOW: u8 = 1;
const DEAD: u8 = 2;
const ERROR: u8 = 3;
const GARBAGE: u8 = 4;

/// A raw TCP upstream whose behaviour is `mode`; counts the requests it reads.
async fn chaotic(mode: Arc<AtomicU8>, hits: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (mode, hits) = (mode.clone(), hits.clone());
            tokio::spawn(async move {
                let m = mode.load(Ordering::SeqCst);
                if m == DEAD {
                    return; // dropped at once: the gateway sees the connection die
                }
                let mut buf = vec![0u8; 8192];
                let mut got = 0;
                while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let reply: &[u8] = match m {
                    SLOW => {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}"
                    }
                    ERROR => b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                    GARBAGE => b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\nconnection: close\r\n\r\n<html>%%%",
                    _ => b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}",
                };
                let _ = s.write_all(reply).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_stay_bounded_while_the_upstream_misbehaves() {
    let mode = Arc::new(AtomicU8::new(OK));
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = chaotic(mode.clone(), hits.clone()).await;
    let deadline = Duration::from_millis(300);
    let gw = Arc::new(
        Gateway::start(&format!(
            "{}
[[routes]]
path = \"/chaos/{{n}}\"
timeout = \"300ms\"
  [[routes.backends]]
  upstream = \"flaky\"
  path = \"/x/{{n}}\"
",
            upstream(
                "flaky",
                &format!("http://{addr}"),
                "timeout = \"200ms\"\ncircuit_breaker = { consecutive_failures = 3, open_for = \"400ms\" }\nretry = { attempts = 2, backoff = \"10ms\" }"
            )
        ))
        .await,
    );

    // Steady load: 6 clients in a loop until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let results = Arc::new(std::sync::Mutex::new(Vec::<(u8, u16, Duration)>::new()));
    let mut clients = Vec::new();
    for c in 0..6 {
        let (gw, stop, results, mode) = (gw.clone(), stop.clone(), results.clone(), mode.clone());
        clients.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let phase = mode.load(Ordering::SeqCst);
                let started = Instant::now();
                let resp = gw
                    .client
                    .get(format!("{}/chaos/{c}-{i}", gw.base))
                    .send()
                    .await
                    .expect("the gateway always answers");
                let status = resp.status().as_u16();
                let _ = resp.bytes().await;
                results
                    .lock()
                    .unwrap()
                    .push((phase, status, started.elapsed()));
            }
        }));
    }

    // The upstream's story, and what the breaker did during each chapter.
    let story = [
        (OK, 1500),
        (SLOW, 2500),
        (OK, 2000),
        (DEAD, 2500),
        (OK, 2000),
        (ERROR, 2500),
        (OK, 2000),
        (GARBAGE, 2500),
        (OK, 2500),
    ];
    let mut seen_open_in_bad_phase = 0;
    let mut closed_at_end_of_ok_phase = 0;
    let mut ok_phases = 0;
    for (m, ms) in story {
        mode.store(m, Ordering::SeqCst);
        let until = Instant::now() + Duration::from_millis(ms);
        let mut states = Vec::new();
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            states.push(gw.breaker("flaky").await);
        }
        match m {
            OK => {
                ok_phases += 1;
                if states.last().map(String::as_str) == Some("closed") {
                    closed_at_end_of_ok_phase += 1;
                }
            }
            // Garbage bodies are not an upstream fault for the breaker (not 5xx, no
            // timeout, the connection works): it must stay shut.
            GARBAGE => assert!(
                states.iter().all(|s| s == "closed"),
                "breaker opened on bad bodies: {states:?}"
            ),
            _ => {
                if states.iter().any(|s| s == "open") {
                    seen_open_in_bad_phase += 1;
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    let results = std::mem::take(&mut *results.lock().unwrap());
    assert!(
        results.len() > 200,
        "steady load: only {} requests",
        results.len()
    );
    for (phase, status, elapsed) in results.iter() {
        assert!(
            *elapsed <= deadline + Duration::from_millis(50),
            "phase {phase}: an answer took {elapsed:?}, status {status}"
        );
        assert!(
            [200, 502, 503, 504].contains(status),
            "phase {phase}: unexpected status {status}"
        );
    }
    let during = |m: u8| results.iter().filter(|(p, _, _)| *p == m).count();
    let failed_fast = results
        .iter()
        .filter(|(p, s, _)| *p != OK && *s == 503)
        .count();
    assert!(failed_fast > 0, "the open breaker failed requests fast");
    assert_eq!(
        seen_open_in_bad_phase, 3,
        "slow, dead and 500s each opened the breaker"
    );
    assert_eq!(
        closed_at_end_of_ok_phase, ok_phases,
        "each recovery closed it again"
    );
    // Fail-fast spared the upstream: during bad phases far fewer calls reached it than
    // requests (times attempts) were made.
    let bad_requests = during(SLOW) + during(ERROR);
    assert!(bad_requests > 0);
    assert!(results.iter().any(|(p, s, _)| *p == GARBAGE && *s == 502));
    let upstream_hits = hits.load(Ordering::SeqCst);
    assert!(
        upstream_hits < results.len() * 2,
        "upstream saw {upstream_hits} calls for {} requests",
        results.len()
    );
    // And the gateway is still well.
    assert_eq!(
        gw.client
            .get(format!("{}/health", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
