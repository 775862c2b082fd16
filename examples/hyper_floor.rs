//! The HTTP engine's own cost, for `benches/compare.py`: hyper alone, used the way
//! manifold uses it, doing only the sockets' work of the two benchmark routes. Not part
//! of the product.
//!
//!     cargo build --release --example hyper_floor
//!
//! One single-threaded tokio loop per core on its own `SO_REUSEPORT` socket
//! (127.0.0.1:7107), hyper's HTTP/1.1 server, and per loop a list of idle kept-alive
//! hyper client connections to the upstream on 127.0.0.1:7001 (the same
//! `hyper::client::conn::http1` handshake and `try_send_request` as
//! src/upstream/pool.rs). What it leaves out is everything manifold adds: routing by
//! table, header filtering, request ids, spans, metrics, limits, timeouts, breakers,
//! and JSON: the fan-out's three answers are joined as they came, unchecked and
//! unshaped, into `{"user":…,"orders":…,"recommendations":…}`.
//!
//! - `GET /api/users/{id}`: the upstream's `/users/{id}`, its answer streamed back;
//! - `GET /api/dashboard/{id}`: `/users/{id}`, `/orders?customer={id}` and
//!   `/recommendations/{id}` at once, joined.
//!
//! So `compare.py`'s `floor` rows are what any gateway built on hyper pays before it
//! does anything of its own.

use std::cell::RefCell;
use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

#[global_allocator]
static ALLOC: manifold::base::alloc::Allocator = manifold::base::alloc::Allocator;

const LISTEN: &str = "127.0.0.1:7107";
const UPSTREAM: &str = "127.0.0.1:7001";

type Body = UnsyncBoxBody<Bytes, hyper::Error>;
type Sender = SendRequest<Full<Bytes>>;

thread_local! {
    /// This loop's idle upstream connections, most recently used last.
    static IDLE: RefCell<Vec<Sender>> = const { RefCell::new(Vec::new()) };
}

fn main() {
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            std::thread::spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(serve());
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

async fn serve() {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.set_reuseport(true).expect("SO_REUSEPORT");
    socket
        .bind(LISTEN.parse().expect("an address"))
        .expect("bind 127.0.0.1:7107");
    let listener = socket.listen(4096).expect("listen");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(handle);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    let answer = if let Some(id) = path.strip_prefix("/api/users/") {
        call(&format!("/users/{id}"))
            .await
            .map(|resp| resp.map(BodyExt::boxed_unsync))
    } else if let Some(id) = path.strip_prefix("/api/dashboard/") {
        dashboard(id).await
    } else {
        Ok(status(StatusCode::NOT_FOUND))
    };
    Ok(answer.unwrap_or_else(|_| status(StatusCode::BAD_GATEWAY)))
}

async fn dashboard(id: &str) -> Result<Response<Body>, hyper::Error> {
    let whole = |path: String| async move {
        let resp = call(&path).await?;
        Ok::<Bytes, hyper::Error>(resp.into_body().collect().await?.to_bytes())
    };
    let (user, orders, recs) = tokio::try_join!(
        whole(format!("/users/{id}")),
        whole(format!("/orders?customer={id}")),
        whole(format!("/recommendations/{id}")),
    )?;
    let mut out = Vec::with_capacity(user.len() + orders.len() + recs.len() + 48);
    for (i, (key, value)) in [
        ("user", user),
        ("orders", orders),
        ("recommendations", recs),
    ]
    .iter()
    .enumerate()
    {
        out.extend_from_slice(if i == 0 { b"{\"" } else { b",\"" });
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(value);
    }
    out.push(b'}');
    let mut resp = Response::new(Full::new(Bytes::from(out)).map_err(never).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// One GET to the upstream, on an idle connection of this loop if one can send now.
async fn call(path: &str) -> Result<Response<Incoming>, hyper::Error> {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = path.parse().expect("a path");
    req.headers_mut()
        .insert(header::HOST, http::HeaderValue::from_static(UPSTREAM));
    let mut sender = match IDLE.with(|idle| take_ready(&mut idle.borrow_mut())) {
        Some(sender) => sender,
        None => connect().await?,
    };
    let resp = sender.send_request(req).await?;
    // Given back at once: hyper queues nothing on it until the answer is read whole
    // (`take_ready` skips it until then), as manifold's lease does when dropped.
    IDLE.with(|idle| idle.borrow_mut().push(sender));
    Ok(resp)
}

fn take_ready(idle: &mut Vec<Sender>) -> Option<Sender> {
    while let Some(i) = idle.iter().rposition(|s| s.is_ready() || s.is_closed()) {
        let sender = idle.swap_remove(i);
        if sender.is_ready() {
            return Some(sender);
        }
    }
    None
}

async fn connect() -> Result<Sender, hyper::Error> {
    let stream = loop {
        match TcpStream::connect(UPSTREAM).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn status(code: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()).map_err(never).boxed_unsync());
    *resp.status_mut() = code;
    resp
}

fn never(e: Infallible) -> hyper::Error {
    match e {}
}
