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
use std::time::Duration;

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::api;
use crate::limits::Reservation;
use crate::shard::Shard;

/// A client connection's byte stream: plain TCP, or TLS over it.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + 'static {
    /// The socket, when what is written to it reaches the client as it is (plain TCP):
    /// a response's pieces then go out in one `sendmsg`.
    fn plain_fd(&self) -> Option<std::os::fd::RawFd>;

    /// The principal of the client's certificate, if it showed one (see security.rs).
    fn certificate_principal(&self) -> Option<String> {
        None
    }
}

impl Transport for TcpStream {
    fn plain_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.as_raw_fd())
    }
}

impl Transport for futures_rustls::server::TlsStream<TcpStream> {
    fn plain_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    fn certificate_principal(&self) -> Option<String> {
        let leaf = self.get_ref().1.peer_certificates()?.first()?;
        crate::security::certificate_principal(leaf.as_ref())
    }
}

/// The two directions of one stream, used by two tasks on one thread. Each poll borrows
/// the stream only for its own duration, so the borrows never overlap.
struct Half<S>(Rc<RefCell<S>>);

impl<S: Transport> AsyncRead for Half<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<S: Transport> AsyncWrite for Half<S> {
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

/// Sends a response's pieces (the codec's bytes and the stored batches they refer to,
/// `crate::frame`) in order, in as few system calls as the socket takes them: one
/// `sendmsg` of every piece while the socket has room (a separate send per piece would
/// push a TCP segment, and on loopback run the receiver's side, per piece); when it is
/// full, glommio's write waits for room and writes the first piece left.
/// Over TLS the pieces are written one after the other (rustls seals them into records)
/// and flushed.
async fn send_frame<S: Transport>(out: &mut Half<S>, parts: &[Bytes]) -> io::Result<()> {
    use std::io::IoSlice;
    let fd = out.0.borrow().plain_fd();
    let fd = match (fd, parts) {
        (Some(_), [one]) => return out.write_all(one).await,
        (Some(fd), _) => fd,
        (None, _) => {
            for p in parts {
                out.write_all(p).await?;
            }
            return out.flush().await;
        }
    };
    let (mut i, mut at) = (0, 0); // next piece, and how much of it was sent
    while i < parts.len() && parts[i].is_empty() {
        i += 1;
    }
    while i < parts.len() {
        let iov: Vec<IoSlice<'_>> = std::iter::once(&parts[i][at..])
            .chain(parts[i + 1..].iter().map(|p| &p[..]))
            .take(MAX_IOV)
            .map(IoSlice::new)
            .collect();
        let flags =
            nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
        let sent = match nix::sys::socket::sendmsg::<()>(fd, &iov, &[], flags, None) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => out.write(&parts[i][at..]).await?,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if sent == 0 && iov.iter().any(|v| !v.is_empty()) {
            return Err(io::ErrorKind::WriteZero.into());
        }
        at += sent;
        while i < parts.len() && at >= parts[i].len() {
            at -= parts[i].len();
            i += 1;
        }
    }
    Ok(())
}

/// Queues an answer given before authentication; `close`: the connection ends, after
/// `delay` (Kafka's connection.failed.authentication.delay.ms: the answer goes out, the
/// close comes later, so retries cannot spin).
async fn answer_before_auth(
    tx: &local_channel::LocalSender<Pending>,
    reply: api::Reply,
    close: bool,
    delay: Duration,
) -> Result<(), Stop> {
    let task = glommio::spawn_local(async move { reply }).detach();
    if tx.send(task).await.is_err() {
        return Err(Stop::Closed);
    }
    if close {
        glommio::timer::sleep(delay).await;
        return Err(Stop::Closed);
    }
    Ok(())
}

/// Largest frame read before a SASL listener's client has authenticated.
const PRE_AUTH_MAX_FRAME: usize = 512 << 10;

/// Pieces given to one `sendmsg` (the kernel's IOV_MAX is 1024).
const MAX_IOV: usize = 512;

/// Bytes read from the socket at a time while a frame's body arrives: a frame's buffer
/// grows with what has arrived, never with what its length prefix claims.
const READ_CHUNK: usize = crate::limits::SMALL_FRAME;

/// Why reading the next request stopped.
enum Stop {
    /// The connection ended (EOF, error, shutdown, the writer closed); already logged.
    Closed,
    /// Closing with a reason worth a line at info (limits) or debug (bad input).
    Refused(String),
}

/// Reads one frame body of `size` bytes: the buffer and the shard's request budget grow
/// chunk by chunk as bytes arrive; the whole body must arrive within `timeout`.
async fn read_body<S: Transport>(
    input: &mut Half<S>,
    size: usize,
    reservation: &mut Reservation,
    timeout: Duration,
) -> Result<Vec<u8>, Stop> {
    let read = async {
        let mut body = Vec::with_capacity(size.min(READ_CHUNK));
        while body.len() < size {
            let want = (size - body.len()).min(READ_CHUNK);
            reservation.grow(want as u64).await;
            let filled = body.len();
            body.resize(filled + want, 0);
            let mut got = 0;
            while got < want {
                match input.read(&mut body[filled + got..filled + want]).await {
                    Ok(0) => return Err(Stop::Closed),
                    Ok(n) => got += n,
                    Err(e) => {
                        tracing::debug!(error = %e, "connection closed mid-request");
                        return Err(Stop::Closed);
                    }
                }
            }
        }
        Ok(body)
    };
    futures_lite::future::or(read, async {
        glommio::timer::sleep(timeout).await;
        Err(Stop::Refused(format!(
            "a {size}-byte request did not arrive within {} ms",
            timeout.as_millis()
        )))
    })
    .await
}

/// A frame's body, past the checks that need no shard.
pub enum Request {
    /// ApiVersions newer than ours: answered (KIP-511) without decoding the body.
    NewerApiVersions,
    /// Header decoded; the body passed the guard, so the codec may decode it.
    Decodable { header: RequestHeader, body: Bytes },
}

/// Why a frame closes its connection (logged at debug, as Kafka does).
#[derive(Debug)]
pub struct Refused {
    pub key: i16,
    pub version: i16,
    pub why: String,
}

/// Everything the connection reader checks of one frame body (the bytes after the size
/// prefix) before a handler sees it: API key and version advertised, the header, and every
/// length in the body against the frame (wire/guard.rs). Pure, so the fuzz targets run
/// exactly this.
pub fn parse_request(mut body: Bytes) -> Result<(ApiKey, i16, i32, Request), Refused> {
    if body.len() < 8 {
        return Err(Refused {
            key: -1,
            version: -1,
            why: format!("{}-byte frame", body.len()),
        });
    }
    let key = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    let refuse = |why: String| Refused { key, version, why };
    let Ok(api_key) = ApiKey::try_from(key) else {
        return Err(refuse("unknown API key".into()));
    };
    if !api::supported(api_key, version) {
        if api_key == ApiKey::ApiVersions {
            return Ok((api_key, version, correlation_id, Request::NewerApiVersions));
        }
        return Err(refuse(
            "unsupported API version (not advertised in ApiVersions)".into(),
        ));
    }
    let header = RequestHeader::decode(&mut body, api_key.request_header_version(version))
        .map_err(|e| refuse(format!("malformed request header: {e:#}")))?;
    // Every length in the body is checked against the frame before the codec reserves
    // anything for it.
    crate::wire::guard::check(key, version, &body)
        .map_err(|e| refuse(format!("malformed request: {e}")))?;
    Ok((
        api_key,
        version,
        correlation_id,
        Request::Decodable { header, body },
    ))
}

/// Splits the next whole frame off `input` (a stream of `[i32 size][body]`) and parses it;
/// `Ok(None)` when `input` holds no whole frame. For the fuzz targets: the socket reader
/// does the same with its reads in between.
pub fn parse_frame(
    input: &mut Bytes,
    max_request_bytes: usize,
) -> Result<Option<(ApiKey, i16, i32, Request)>, Refused> {
    if input.len() < 4 {
        return Ok(None);
    }
    let size = i32::from_be_bytes([input[0], input[1], input[2], input[3]]);
    if size < 8 || size as usize > max_request_bytes {
        return Err(Refused {
            key: -1,
            version: -1,
            why: format!("frame size {size}"),
        });
    }
    if input.len() < 4 + size as usize {
        return Ok(None);
    }
    let mut frame = input.split_to(4 + size as usize);
    let _ = frame.split_to(4);
    parse_request(frame).map(Some)
}

/// A whole frame for `body` (header with client id "fuzz", correlation id 1), as a client
/// would send it: seeds for the fuzz corpus.
pub fn sample_frame(key: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let api = ApiKey::try_from(key).expect("a known API key");
    let mut h = bytes::BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(kafka_protocol::protocol::StrBytes::from_static_str(
            "fuzz",
        )))
        .encode(&mut h, api.request_header_version(version))
        .expect("a header encodes");
    let size = (h.len() + body.len()) as i32;
    let mut out = size.to_be_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
    out
}

/// Serves one client connection on `stream` (TCP with nodelay set, or TLS over it), which
/// came in through the broker's listener number `listener`.
/// `auth`: the listener's SASL state; then nothing but ApiVersions and the SASL exchange
/// is served until the client has authenticated.
pub async fn serve<S: Transport>(
    shard: Rc<Shard>,
    stream: S,
    peer: SocketAddr,
    listener: usize,
    auth: Option<Rc<crate::sasl::Auth>>,
) {
    let mut session = crate::handlers::sasl::Session::default();
    tracing::debug!(%peer, shard = shard.id, "connection opened");
    let ip = crate::security::canonical_ip(peer.ip());
    let host: std::sync::Arc<str> = format!("/{ip}").into();
    // Who the client is: its certificate's subject, until SASL names a user.
    let mut principal: std::sync::Arc<str> = stream
        .certificate_principal()
        .map_or_else(|| crate::security::ANONYMOUS.into(), Into::into);
    let stream = Rc::new(RefCell::new(stream));
    let (tx, rx) = local_channel::new_bounded::<Pending>(shard.cfg.max_inflight_requests.max(1));
    let closed = Rc::new((Cell::new(false), event_listener::Event::new()));
    let idle = Duration::from_millis(shard.cfg.connections_max_idle_ms);
    let read_timeout = Duration::from_millis(shard.cfg.request_read_timeout_ms);

    let writer = {
        let mut out = Half(stream.clone());
        let closed = closed.clone();
        glommio::spawn_local(async move {
            while let Some(task) = rx.recv().await {
                match task.await {
                    Some(Ok(Some(frame))) => {
                        if let Err(e) = send_frame(&mut out, frame.parts()).await {
                            tracing::debug!(%peer, error = %e, "write failed; closing connection");
                            break;
                        }
                    }
                    Some(Ok(None)) => {} // acks=0: no response
                    Some(Err(e)) => {
                        // The body passed the guard but the codec (or a handler) refused
                        // it: bad input, so debug, as Kafka logs it.
                        tracing::debug!(%peer, "closing connection: {e}");
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
    let stop = loop {
        let mut len = [0u8; 4];
        // Between requests: the connection may sit idle up to connections.max.idle.ms, and
        // stops waiting when the broker shuts down or the writer closed the connection.
        let got = futures_lite::future::or(
            async { Some(input.read_exact(&mut len).await.map(|_| true)) },
            futures_lite::future::or(
                async {
                    glommio::timer::sleep(idle).await;
                    Some(Ok(false))
                },
                async {
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
                },
            ),
        )
        .await;
        match got {
            None => break Stop::Closed,
            Some(Ok(true)) => {}
            Some(Ok(false)) => {
                tracing::debug!(%peer, idle_ms = idle.as_millis() as u64, "closing idle connection");
                break Stop::Closed;
            }
            Some(Err(e)) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    tracing::debug!(%peer, error = %e, "read failed");
                }
                break Stop::Closed;
            }
        }
        // A request's latency counts from its length prefix: reading its body is part of it.
        let started = std::time::Instant::now();
        let size = i32::from_be_bytes(len);
        // Before authentication a frame is a handshake's: Kafka's sasl.server.max.receive.size
        // (512 KiB) bounds it, so clients that never log in cannot spend the request budget.
        // A bare token (after SaslHandshake v0) may be shorter than any request.
        let unauthenticated = auth.is_some() && session.user.is_none();
        let (min, max) = match (unauthenticated, session.raw_tokens()) {
            (true, true) => (0, PRE_AUTH_MAX_FRAME),
            (true, false) => (8, PRE_AUTH_MAX_FRAME),
            (false, _) => (8, shard.cfg.max_request_bytes),
        };
        if size < min || size as usize > max {
            break Stop::Refused(format!(
                "request frame size {size} out of bounds ({min}..={max})"
            ));
        }
        let mut reservation = shard.request_budget.reservation(size as usize);
        let body = match read_body(&mut input, size as usize, &mut reservation, read_timeout).await
        {
            Ok(b) => b,
            Err(stop) => break stop,
        };
        if let (Some(auth), true) = (&auth, session.raw_tokens()) {
            let (answer, close) = crate::handlers::sasl::raw_token(
                auth,
                &shard.sasl_users(),
                &mut session,
                peer.ip(),
                &body,
            );
            let reply = Ok(answer.map(crate::frame::Frame::one));
            match answer_before_auth(&tx, reply, close, auth.delay).await {
                Ok(()) => continue,
                Err(stop) => break stop,
            }
        }
        let (api_key, version, correlation_id, request) = match parse_request(Bytes::from(body)) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(%peer, api = e.key, version = e.version, "closing connection: {}", e.why);
                break Stop::Closed;
            }
        };
        // An authenticated session that has ended (KIP-368) serves a re-authentication
        // and nothing else: a client that does not renew it is closed.
        let sasl_request = matches!(api_key, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate);
        if auth.is_some() && !sasl_request && session.expired(std::time::Instant::now()) {
            tracing::info!(%peer, "closing connection: its SASL session ended (connections.max.reauth.ms) without re-authentication");
            break Stop::Closed;
        }
        if let (Some(auth), true, Request::Decodable { body, .. }) =
            (&auth, session.user.is_none() || sasl_request, &request)
        {
            use crate::handlers::sasl::PreAuth;
            match crate::handlers::sasl::before_auth(
                auth,
                &shard.sasl_users(),
                &mut session,
                peer.ip(),
                api_key,
                version,
                correlation_id,
                body.clone(),
            ) {
                PreAuth::Pass => {}
                PreAuth::Answer { reply, close } => {
                    crate::observe::request_done(api_key, started.elapsed());
                    match answer_before_auth(&tx, reply, close, auth.delay).await {
                        Ok(()) => continue,
                        Err(stop) => break stop,
                    }
                }
                PreAuth::Refuse(why) => {
                    tracing::debug!(%peer, "closing connection: {why}");
                    break Stop::Closed;
                }
            }
        }
        let task: Pending = match request {
            Request::NewerApiVersions => {
                // Answered without decoding the body: its layout may be one we do not know.
                glommio::spawn_local(async move {
                    let reply = api::api_versions(correlation_id, version);
                    crate::observe::request_done(api_key, started.elapsed());
                    reply
                })
                .detach()
            }
            Request::Decodable { header, body } => {
                if let Some(user) = &session.user {
                    if principal.strip_prefix("User:") != Some(user.as_str()) {
                        principal = format!("User:{user}").into();
                    }
                }
                let client = crate::coordinator::Client {
                    client_id: header.client_id,
                    host: host.clone(),
                    listener,
                    principal: principal.clone(),
                };
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    let reply =
                        api::dispatch(&shard, api_key, version, correlation_id, body, client).await;
                    crate::observe::request_done(api_key, started.elapsed());
                    // Its bytes count against the shard's budget until it is answered.
                    drop(reservation);
                    reply
                })
                .detach()
            }
        };
        tracing::trace!(%peer, api = ?api_key, version, correlation_id, "request");
        if tx.send(task).await.is_err() {
            break Stop::Closed;
        }
    };
    if let Stop::Refused(why) = stop {
        tracing::info!(%peer, "closing connection: {why}");
    }
    drop(tx);
    tracing::debug!(%peer, "connection reader done");
    // The writer answers what was already read, then ends.
    writer.await;
    tracing::debug!(%peer, "connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many pieces, more than the socket holds, to a reader that takes its time: every
    /// path of `send_frame` (one sendmsg, a full socket, a piece cut mid-way, empty
    /// pieces) must deliver the bytes whole and in order.
    #[test]
    fn a_frame_of_many_pieces_arrives_whole_and_in_order() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut parts = Vec::new();
        let mut expected = Vec::new();
        for i in 0..300usize {
            let len = match i % 5 {
                0 => 0,
                1 => 7,
                2 => 64 << 10,
                3 => 100_003,
                _ => 20_000,
            };
            let piece: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
            expected.extend_from_slice(&piece);
            parts.push(Bytes::from(piece));
        }
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match s.read(&mut buf).unwrap() {
                    0 => break,
                    n => got.extend_from_slice(&buf[..n]),
                }
                // Slow at first, so the sender finds the socket full.
                if got.len() < 4 << 20 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            got
        });
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let stream = TcpStream::connect(addr).await.unwrap();
                let mut out = Half(Rc::new(RefCell::new(stream)));
                send_frame(&mut out, &parts).await.unwrap();
                out.close().await.unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
        let got = reader.join().unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes arrived changed or out of order");
    }
}
