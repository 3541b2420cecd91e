//! The metrics listener (`metrics_listen`, off by default): HTTP/1.1 on shard 0, one
//! request per connection. `GET /metrics` (Prometheus text), `GET /health` (the process
//! answers), `GET /ready` (this broker serves its partitions and, on a cluster, knows a
//! controller leader). It is read by scrapers and probes, not by the public: every
//! connection is bounded in size, time and number, and anything else is a 4xx.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::shard::Shard;

/// A request's line and headers must fit in this and arrive within `READ_TIMEOUT`.
const MAX_REQUEST: usize = 8192;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// More scrapers at once than this wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;

/// Serves until the broker stops; the listener is already bound (errors at start-up are
/// the caller's).
pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    let open = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.stopped().await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if open.get() >= MAX_CONNECTIONS {
            drop(stream);
            continue;
        }
        open.set(open.get() + 1);
        let (shard, open) = (shard.clone(), open.clone());
        glommio::spawn_local(async move {
            let done = futures_lite::future::or(
                async {
                    answer(&shard, stream).await;
                },
                // A scrape of a broker that cannot gather its shards still ends.
                glommio::timer::sleep(READ_TIMEOUT * 3),
            );
            done.await;
            open.set(open.get() - 1);
        })
        .detach();
    }
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

fn text(status: &'static str, body: impl Into<String>) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into(),
    }
}

async fn answer(shard: &Rc<Shard>, mut stream: TcpStream) {
    let Some(request) = read_head(&mut stream).await else {
        return;
    };
    let response = match request {
        Err(r) => r,
        Ok((method, path)) => route(shard, &method, &path).await,
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_ok() {
        let _ = stream.write_all(response.body.as_bytes()).await;
    }
    let _ = stream.close().await;
}

/// The method and path of the request, or the error answer; None when the client went
/// away or was too slow (nothing to answer).
async fn read_head(stream: &mut TcpStream) -> Option<Result<(String, String), Response>> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let deadline = std::time::Instant::now() + READ_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let n =
            futures_lite::future::or(async { Some(stream.read(&mut buf[len..]).await) }, async {
                glommio::timer::sleep(left).await;
                None
            })
            .await?
            .ok()?;
        if n == 0 {
            return None;
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or("").to_string();
                let path = req.path.unwrap_or("/").to_string();
                return Some(Ok((method, path)));
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            Ok(httparse::Status::Partial) => {
                return Some(Err(text(
                    "431 Request Header Fields Too Large",
                    "request head over 8 KiB\n",
                )));
            }
            Err(e) => return Some(Err(text("400 Bad Request", format!("{e}\n")))),
        }
    }
}

async fn route(shard: &Rc<Shard>, method: &str, path: &str) -> Response {
    if method != "GET" {
        return text("405 Method Not Allowed", "only GET\n");
    }
    // Query strings (a scraper's ?name[]=...) are ignored.
    let path = path.split('?').next().unwrap_or("");
    match path {
        "/health" => text("200 OK", "ok\n"),
        "/ready" => match shard.readiness().await {
            Ok(()) => text("200 OK", "ready\n"),
            Err(why) => text("503 Service Unavailable", format!("not ready: {why}\n")),
        },
        "/metrics" => match shard.snapshots(READ_TIMEOUT).await {
            Ok(shards) => Response {
                status: "200 OK",
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: super::render(shard.broker_info(), shards),
            },
            Err(why) => text("503 Service Unavailable", format!("{why}\n")),
        },
        _ => text(
            "404 Not Found",
            "not found: try /metrics, /health or /ready\n",
        ),
    }
}
