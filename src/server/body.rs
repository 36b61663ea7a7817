//! Request bodies, read whole before a handler sees them: at most a size per endpoint
//! (413 beyond it) and within the listener's body timeout (408), so that a client sending
//! its body one byte at a time holds a connection for that long at most.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Buffers the body of `request` (at most `LIMIT` bytes) and passes it on.
pub async fn buffered<const LIMIT: usize>(request: Request, next: Next) -> Response {
    let timeout = super::listen::connection().map_or(super::limits::DEFAULT_BODY_TIMEOUT, |c| {
        c.limits.body_timeout
    });
    let (parts, body) = request.into_parts();
    match read(body, LIMIT, timeout).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(refusal) => refusal,
    }
}

/// The whole body, or the response that refuses it.
pub async fn read(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<axum::body::Bytes, Response> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        // `to_bytes` fails for a body over the limit, or a connection that broke.
        Ok(Err(_)) => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is at most {limit} bytes\n"),
        )
            .into_response()),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s\n",
                timeout.as_secs_f64()
            ),
        )
            .into_response()),
    }
}
