//! Bodies the HTTP gateway streams, never buffers: a request body that a
//! second attempt may send as long as the first never read it, and the
//! response body, which holds its instance's lease until it ends.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use super::balance::Lease;

/// A client's request body, for one or more attempts.
pub(crate) struct Replay {
    // Never held across an await: only the body's own polls lock it.
    unread: Arc<Mutex<Option<Incoming>>>,
}

impl Replay {
    pub(crate) fn new(body: Incoming) -> Self {
        Replay {
            unread: Arc::new(Mutex::new(Some(body))),
        }
    }

    /// The body for one attempt; it takes the client's body on its first read.
    pub(crate) fn attempt(&self) -> Outgoing {
        Outgoing {
            unread: self.unread.clone(),
            body: None,
        }
    }

    /// True while no attempt has read the body: another may send it whole.
    pub(crate) fn is_unread(&self) -> bool {
        self.unread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

/// The request body of one attempt.
pub(crate) struct Outgoing {
    unread: Arc<Mutex<Option<Incoming>>>,
    body: Option<Incoming>,
}

impl Outgoing {
    fn with_body<T>(&self, f: impl FnOnce(Option<&Incoming>) -> T) -> T {
        match &self.body {
            Some(body) => f(Some(body)),
            None => f(self
                .unread
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()),
        }
    }
}

impl HttpBody for Outgoing {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.body.is_none() {
            let taken = self.unread.lock().unwrap_or_else(|e| e.into_inner()).take();
            self.body = taken;
        }
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.with_body(|b| b.is_none_or(HttpBody::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        self.with_body(|b| b.map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint))
    }
}

/// What the gateway answers with: an instance's body, or its own text.
pub(crate) enum Body {
    /// Streamed from an instance, whose lease ends with it.
    Upstream(Incoming, Option<Lease>),
    /// The gateway's own answer (a reason, a list).
    Text(Option<Bytes>),
}

impl Body {
    pub(crate) fn text(text: impl Into<Bytes>) -> Self {
        Body::Text(Some(text.into()))
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Upstream(body, lease) => {
                let frame = Pin::new(body).poll_frame(cx);
                if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
                    lease.take();
                }
                frame
            }
            Body::Text(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Upstream(body, _) => body.is_end_stream(),
            Body::Text(text) => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Upstream(body, _) => body.size_hint(),
            Body::Text(text) => SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64)),
        }
    }
}
