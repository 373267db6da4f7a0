//! The request body's read timeout: a client that sends a head and then stalls (or
//! trickles) its body is answered 408 and its connection closed, instead of holding a
//! handler and a connection for as long as it likes.
//!
//! tower-http's `TimeoutBody` fails the body's read after [`Limits::body_read_timeout`]
//! of silence; the handler sees a body it could not read, so this layer, which saw the
//! timeout happen, replaces whatever the handler answered with the 408. Handlers keep one
//! way of reading bodies (JSON or multipart) and need not know about timeouts.
//!
//! [`Limits::body_read_timeout`]: crate::Limits::body_read_timeout

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use tower_http::BoxError;
use tower_http::timeout::{TimeoutBody, TimeoutError};

use crate::error::HttpError;

pub async fn layer(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    let stalled = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        Body::new(Watched {
            body: Box::pin(TimeoutBody::new(timeout, body)),
            stalled: stalled.clone(),
        })
    });
    let resp = next.run(req).await;
    if !stalled.load(Ordering::Relaxed) {
        return resp;
    }
    let mut resp = HttpError::body_timeout(timeout.as_secs()).into_response();
    // The rest of the body may still come: the connection cannot be reused.
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Notes whether the body's read failed for its timeout (rather than, say, its size).
struct Watched {
    body: Pin<Box<TimeoutBody<Body>>>,
    stalled: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = self.body.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &frame
            && e.is::<TimeoutError>()
        {
            self.stalled.store(true, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
