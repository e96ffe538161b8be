//! The accept loop of `berth serve`, plain or TLS: what keeps one client from holding the
//! server. A connection must send its request headers within `headerReadTimeout` (which also
//! bounds a kept-alive connection waiting for its next request), a connection on which nothing
//! moves for `idleTimeout` is closed (mid-body too, so a stalled upload gives up its session),
//! and at most `maxConnections` are open. At the cap, the connection idle longest (between
//! requests: waiting for its next request's headers, or its first) is closed to make room, so
//! a new client is served at once however many idle keep-alives there are; only while every
//! open connection is serving a request does a new one wait for a slot. One warning a minute
//! says the cap is reached.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::tls::ReloadingTls;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors kept free for the store, logs and the listener when fitting the cap to the limit.
const SPARE_FDS: u64 = 128;

#[derive(Clone, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// `max_connections`, lowered so that every connection can have its descriptor: at the fd
/// limit accept fails and the server could no longer open blobs either.
pub fn fit_to_fd_limit(max_connections: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return max_connections;
    }
    // Half the rest: each request may hold a blob file or a store connection besides its socket.
    let room = (lim.rlim_cur.saturating_sub(SPARE_FDS) / 2).max(16);
    max_connections.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests being served: from the parsed request head until the response body is done.
    busy: AtomicUsize,
    /// When it last became idle, in nanoseconds since [`Conns::epoch`].
    idle_since: AtomicU64,
    /// Set once it has been told to close.
    closing: AtomicBool,
    /// Tells the connection to close: at once if idle, else after the request it serves.
    close: Notify,
}

/// Every open connection, and what the accept loop waits on at the cap.
struct Conns {
    epoch: Instant,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// The accept loop waits at the cap for a connection to become idle.
    waiting: AtomicBool,
    became_idle: Notify,
}

impl Conns {
    fn new() -> Conns {
        Conns {
            epoch: Instant::now(),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            became_idle: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        // The map is only inserted into and removed from: a panic cannot leave it torn.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new connection, idle until its first request's head has been read.
    fn register(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now()),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open().insert(id, conn.clone());
        Slot {
            conns: self.clone(),
            id,
            conn,
            _permit: permit,
        }
    }

    /// Tells the connection idle longest to close, and returns it; `None` if none is idle.
    fn close_oldest_idle(&self) -> Option<Arc<Conn>> {
        let open = self.open();
        let oldest = open
            .values()
            .filter(|c| c.busy.load(Ordering::Acquire) == 0 && !c.closing.load(Ordering::Acquire))
            .min_by_key(|c| c.idle_since.load(Ordering::Acquire));
        let c = oldest?;
        c.closing.store(true, Ordering::Release);
        c.close.notify_one();
        Some(c.clone())
    }

    fn close_all(&self) {
        for c in self.open().values() {
            c.closing.store(true, Ordering::Release);
            c.close.notify_one();
        }
    }
}

/// A connection's place: its entry in [`Conns`] and its permit, both given back on drop.
struct Slot {
    conns: Arc<Conns>,
    id: u64,
    conn: Arc<Conn>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.open().remove(&self.id);
    }
}

/// Held while a request is served, on its response body: the connection is idle again when
/// the last byte has been handed to hyper (or the request was abandoned).
struct Busy {
    conns: Arc<Conns>,
    conn: Arc<Conn>,
}

impl Busy {
    fn start(conns: &Arc<Conns>, conn: &Arc<Conn>) -> Busy {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Busy {
            conns: conns.clone(),
            conn: conn.clone(),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.conns.now(), Ordering::Release);
        if self.conn.busy.fetch_sub(1, Ordering::AcqRel) == 1
            && self.conns.waiting.load(Ordering::Acquire)
        {
            self.conns.became_idle.notify_waiters();
        }
    }
}

/// A response body that keeps its connection marked busy until it is done.
struct Tracked<B> {
    inner: B,
    _busy: Busy,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `router` until `shutdown` resolves, then lets open connections finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ReloadingTls>,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let tls = tls.map(Arc::new);
    // Clamped for `acquire_many` at shutdown, which counts in u32.
    let max = limits
        .max_connections
        .clamp(1, usize::try_from(u32::MAX).unwrap_or(usize::MAX));
    let slots = Arc::new(Semaphore::new(max));
    let conns = Arc::new(Conns::new());
    let mut last_full_warning: Option<Instant> = None;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if last_full_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(
                        max_connections = max,
                        "connection limit reached: closing the longest-idle keep-alive \
                         connections to make room; new connections wait while every open one \
                         is busy (limits.maxConnections)"
                    );
                    last_full_warning = Some(Instant::now());
                }
                match make_room(&slots, &conns, &mut shutdown).await {
                    Some(p) => p,
                    None => break,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let slot = conns.register(permit);
        let router = router.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let conns = conns.clone();
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            let conn = slot.conn.clone();
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                let busy = Busy::start(&conns, &conn);
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                let mut r = router.clone();
                async move {
                    let res = tower::Service::call(&mut r, req).await;
                    res.map(|res| res.map(|inner| Tracked { inner, _busy: busy }))
                }
            });
            let close = &slot.conn.close;
            let result = match tls {
                None => {
                    let io = TokioIo::new(IdleTimeout::new(tcp, idle));
                    drive(builder.serve_connection(io, svc), close).await
                }
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                    let handshake = acceptor.accept(IdleTimeout::new(tcp, idle));
                    // A connection still shaking hands has sent no request: it may be closed
                    // for room like an idle one.
                    let stream = tokio::select! {
                        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        },
                        _ = close.notified() => return,
                    };
                    let io = TokioIo::new(stream);
                    drive(builder.serve_connection(io, svc), close).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    // Every connection closes once idle, finishing the request it serves; all permits back
    // means all are gone.
    conns.close_all();
    let _ = slots
        .acquire_many(u32::try_from(max).unwrap_or(u32::MAX))
        .await;
    Ok(())
}

/// At the cap: closes the longest-idle connection and waits for its slot; with none idle,
/// waits for a slot or for a connection to become idle. `None` at shutdown.
async fn make_room(
    slots: &Arc<Semaphore>,
    conns: &Conns,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
) -> Option<OwnedSemaphorePermit> {
    conns.waiting.store(true, Ordering::Release);
    // The connection told to close for this newcomer, while it has not closed yet.
    let mut closing: Option<Arc<Conn>> = None;
    let permit = loop {
        if let Ok(p) = slots.clone().try_acquire_owned() {
            break Some(p);
        }
        // Registered before looking, so an idle transition in between is not missed.
        let became_idle = conns.became_idle.notified();
        tokio::pin!(became_idle);
        became_idle.as_mut().enable();
        // The one told to close may have started a request just then (it closes after that
        // request): then another idle one goes instead.
        if closing
            .as_ref()
            .is_none_or(|c| c.busy.load(Ordering::Acquire) > 0)
        {
            closing = conns.close_oldest_idle();
        }
        tokio::select! {
            p = slots.clone().acquire_owned() => break p.ok(),
            _ = &mut became_idle => {}
            _ = shutdown.as_mut() => break None,
        }
    };
    conns.waiting.store(false, Ordering::Release);
    permit
}

/// Runs one connection until it ends, or until it is told to close: then it finishes the
/// request in progress, if any, and closes.
async fn drive<I, S, B>(
    conn: hyper::server::conn::http1::Connection<I, S>,
    close: &Notify,
) -> hyper::Result<()>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = close.notified() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// A stream that fails with `TimedOut` once nothing has moved either way for `limit` while
/// a read or write waits. Activity only stores an `Instant`; the timer is re-armed when it
/// fires early, so busy connections pay no timer work per read.
struct IdleTimeout<T> {
    inner: T,
    limit: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<T> IdleTimeout<T> {
    fn new(inner: T, limit: Duration) -> Self {
        let now = Instant::now();
        IdleTimeout {
            inner,
            limit,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
        }
    }

    /// Called when the inner stream is not ready: an error once the connection has idled out.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        // The timer stays armed at an older deadline while data moves (an activity only
        // moves `last` later): re-arming it on every wait would cost a timer-wheel update per
        // request. When it fires early, it is moved to the real deadline.
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let deadline = self.last + self.limit;
            if deadline <= Instant::now() {
                return Poll::Ready(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.last = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.last = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.last = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
