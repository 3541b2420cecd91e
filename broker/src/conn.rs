//! One client connection: a reader that frames and decodes requests and starts each as
//! its own task (so pipelined requests overlap), and a writer that sends the answers in
//! request order, as Kafka requires. A malformed or oversized frame closes only this
//! connection, with a log line.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;

use crate::api;
use crate::shard::Shard;

/// The two directions of one socket, used by two tasks on one thread. Each poll borrows
/// the stream only for its own duration, so the borrows never overlap.
struct Half(Rc<RefCell<TcpStream>>);

impl AsyncRead for Half {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Half {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

type Pending = glommio::task::JoinHandle<api::Reply>;

pub async fn serve(shard: Rc<Shard>, stream: TcpStream, peer: SocketAddr) {
    tracing::debug!(%peer, shard = shard.id, "connection opened");
    let host: std::sync::Arc<str> = format!("/{}", peer.ip()).into();
    let _ = stream.set_nodelay(true);
    let stream = Rc::new(RefCell::new(stream));
    let (tx, rx) = local_channel::new_bounded::<Pending>(shard.cfg.max_inflight_requests.max(1));
    let closed = Rc::new((Cell::new(false), event_listener::Event::new()));

    let writer = {
        let mut out = Half(stream.clone());
        let closed = closed.clone();
        glommio::spawn_local(async move {
            while let Some(task) = rx.recv().await {
                match task.await {
                    Some(Ok(Some(bytes))) => {
                        if let Err(e) = out.write_all(&bytes).await {
                            tracing::debug!(%peer, error = %e, "write failed; closing connection");
                            break;
                        }
                    }
                    Some(Ok(None)) => {} // acks=0: no response
                    Some(Err(e)) => {
                        tracing::warn!(%peer, "closing connection: {e}");
                        break;
                    }
                    None => break,
                }
            }
            closed.0.set(true);
            closed.1.notify(usize::MAX);
        })
    };

    let mut input = Half(stream.clone());
    loop {
        let mut len = [0u8; 4];
        let got =
            futures_lite::future::or(async { Some(input.read_exact(&mut len).await) }, async {
                futures_lite::future::or(shard.stopped(), async {
                    loop {
                        let l = closed.1.listen();
                        if closed.0.get() {
                            return;
                        }
                        l.await;
                    }
                })
                .await;
                None
            })
            .await;
        match got {
            None => break,
            Some(Err(e)) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    tracing::debug!(%peer, error = %e, "read failed");
                }
                break;
            }
            Some(Ok(())) => {}
        }
        let size = i32::from_be_bytes(len);
        if size < 8 || size as usize > shard.cfg.max_request_bytes {
            tracing::warn!(%peer, size, limit = shard.cfg.max_request_bytes, "closing connection: request frame size out of bounds");
            break;
        }
        let mut body = vec![0u8; size as usize];
        if let Err(e) = input.read_exact(&mut body).await {
            tracing::debug!(%peer, error = %e, "connection closed mid-request");
            break;
        }
        let mut body = Bytes::from(body);
        let key = i16::from_be_bytes([body[0], body[1]]);
        let version = i16::from_be_bytes([body[2], body[3]]);
        let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
        let Ok(api_key) = ApiKey::try_from(key) else {
            tracing::warn!(%peer, key, "closing connection: unknown API key");
            break;
        };
        let task: Pending = if api_key == ApiKey::ApiVersions && !api::supported(api_key, version) {
            // Answered without decoding the body: its layout may be one we do not know.
            glommio::spawn_local(async move { api::api_versions(correlation_id, version) }).detach()
        } else if !api::supported(api_key, version) {
            tracing::warn!(%peer, api = ?api_key, version, "closing connection: unsupported API version (not advertised in ApiVersions)");
            break;
        } else {
            let header = match RequestHeader::decode(
                &mut body,
                api_key.request_header_version(version),
            ) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(%peer, api = ?api_key, "closing connection: malformed request header: {e:#}");
                    break;
                }
            };
            let client = crate::coordinator::Client {
                client_id: header.client_id,
                host: host.clone(),
            };
            let shard = shard.clone();
            glommio::spawn_local(async move {
                api::dispatch(&shard, api_key, version, correlation_id, body, client).await
            })
            .detach()
        };
        tracing::trace!(%peer, api = ?api_key, version, correlation_id, "request");
        if tx.send(task).await.is_err() {
            break;
        }
    }
    drop(tx);
    tracing::debug!(%peer, "connection reader done");
    // The writer answers what was already read, then ends.
    writer.await;
    tracing::debug!(%peer, "connection closed");
}
