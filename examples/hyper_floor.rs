//! The floor for pass-through on manifold's stack: a reverse proxy that does nothing but
//! forward `GET /api/users/{id}` on 127.0.0.1:7103 to `/users/{id}` on 127.0.0.1:7001,
//! built the way manifold is (one single-threaded loop per core on `SO_REUSEPORT`
//! listeners, hyper's HTTP/1.1 server, hyper's connection-level client with a
//! keep-alive pool per loop) and without anything else: no routing table, header
//! rules, request ids, deadlines, metrics or logs. What manifold spends per request
//! beyond this is the cost of its features; what this spends beyond nginx is hyper's.
//!
//!     cargo build --release --example hyper_floor
//!     python3 benches/passthrough_ab.py --bin target/release/manifold \
//!         --bin target/release/examples/hyper_floor
//!
//! Arguments are ignored, so it stands in wherever the benchmarks start manifold.

use std::cell::RefCell;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Sender = SendRequest<Empty<Bytes>>;

thread_local! {
    /// This loop's idle upstream connections, most recently used last.
    static IDLE: RefCell<Vec<Sender>> = const { RefCell::new(Vec::new()) };
}

/// The upstream's body; its connection goes back to the loop's list once it is read.
struct Answer {
    body: Incoming,
    sender: Option<Sender>,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if self.body.is_end_stream()
            && let Some(s) = self.sender.take()
        {
            IDLE.with(|idle| idle.borrow_mut().push(s));
        }
    }
}

async fn sender() -> Result<Sender, Box<dyn std::error::Error + Send + Sync>> {
    // The newest that can send now; closed ones are dropped, busy ones kept.
    let found = IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].is_closed() {
                idle.remove(i);
            } else if idle[i].is_ready() {
                return Some(idle.remove(i));
            }
        }
        None
    });
    if let Some(s) = found {
        return Ok(s);
    }
    let stream = tokio::net::TcpStream::connect("127.0.0.1:7001").await?;
    stream.set_nodelay(true)?;
    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(s)
}

async fn forward(
    req: Request<Incoming>,
) -> Result<Response<Either<Answer, Empty<Bytes>>>, Infallible> {
    let status = |s: StatusCode| {
        let mut r = Response::new(Either::Right(Empty::new()));
        *r.status_mut() = s;
        Ok(r)
    };
    let Some(id) = req.uri().path().strip_prefix("/api/users/") else {
        return status(StatusCode::NOT_FOUND);
    };
    let Ok(uri) = Uri::try_from(format!("/users/{id}")) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let mut out = Request::new(Empty::new());
    *out.uri_mut() = uri;
    out.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("127.0.0.1:7001"));
    let Ok(mut s) = sender().await else {
        return status(StatusCode::BAD_GATEWAY);
    };
    match s.send_request(out).await {
        Ok(resp) => Ok(resp.map(|body| {
            Either::Left(Answer {
                body,
                sender: Some(s),
            })
        })),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

fn main() -> std::io::Result<()> {
    let loops = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..loops)
        .map(|_| {
            std::thread::spawn(|| -> std::io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.set_reuseaddr(true)?;
                    socket.set_reuseport(true)?;
                    socket.bind(([127, 0, 0, 1], 7103).into())?;
                    let listener = socket.listen(4096)?;
                    loop {
                        let (stream, _) = listener.accept().await?;
                        stream.set_nodelay(true)?;
                        tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                            TokioIo::new(stream),
                            hyper::service::service_fn(forward),
                        ));
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| std::io::Error::other("a loop panicked"))??;
    }
    Ok(())
}
