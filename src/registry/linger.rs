//! Reading the rest of a request body the handler refused, before answering.
//!
//! A handler that refuses an upload early (the disk is full, the blob is past `maxBlobBytes`,
//! a quota or access rule says no) answers while the client is still sending. hyper does not
//! read what is left, so when it closes the connection the kernel has unread data and sends
//! a reset, and a reset arriving before the client reads the answer discards it: the client
//! sees "connection reset" instead of the 507 or 413 that says why (RFC 9112 §9.6). Servers
//! linger for this (nginx's `lingering_close`); so does this layer: once the handler is done,
//! whatever of the body it left unread is read and discarded, within [`MAX_BYTES`] and
//! [`MAX_TIME`], and only then is the answer sent. A body read to its end also keeps the
//! connection alive for the client's next request.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;

/// The most of a refused body read before giving up and closing.
pub const MAX_BYTES: u64 = 256 << 20;
/// The longest a refused body is read before giving up and closing.
pub const MAX_TIME: Duration = Duration::from_secs(10);

/// The body a handler left unread, handed back when the handler drops it.
type Slot = Arc<Mutex<Option<Body>>>;

/// A request body that gives what is left of itself back to [`Slot`] when dropped unfinished.
struct Returned {
    inner: Option<Body>,
    slot: Slot,
}

impl http_body::Body for Returned {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = frame {
            // Finished (or broken): nothing is left to read.
            self.inner = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        if let Some(body) = self.inner.take().filter(|b| !b.is_end_stream())
            && let Ok(mut slot) = self.slot.lock()
        {
            *slot = Some(body);
        }
    }
}

/// Middleware: requests with a body get it back after the handler, and what the handler did
/// not read is drained before the answer goes out.
pub async fn drain_unread(request: Request, next: Next) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let slot: Slot = Arc::default();
    let request = request.map(|inner| {
        Body::new(Returned {
            inner: Some(inner),
            slot: slot.clone(),
        })
    });
    let mut response = next.run(request).await;
    let left = slot.lock().ok().and_then(|mut s| s.take());
    if let Some(body) = left
        && !drain(body).await
    {
        // Not read to its end: hyper closes the connection after this answer; say so.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads and discards `body` within the limits; true when it was read to its end.
async fn drain(mut body: Body) -> bool {
    let read = async {
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            n += frame.data_ref().map_or(0, |d| d.len() as u64);
            if n > MAX_BYTES {
                return false;
            }
        }
        true
    };
    let done = tokio::time::timeout(MAX_TIME, read).await.unwrap_or(false);
    if !done {
        tracing::debug!("a refused request body was not read to its end; closing");
    }
    done
}
