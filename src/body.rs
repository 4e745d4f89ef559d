//! The body of every response wsgate sends: the backend's, streamed, or a
//! short one of its own. Vocabulary shared by the HTTP stage, the upstream
//! and the error answers, so it lives below all three.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A body wsgate has whole.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// No body (a 101, a request without one).
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A request's body as it is forwarded: hyper's, streamed on; none for a
/// request read without hyper (an upgrade on the fast path, which never
/// has one).
pub trait RequestBody: Send + 'static {
    fn into_proxy_body(self) -> ProxyBody;
}

impl RequestBody for hyper::body::Incoming {
    fn into_proxy_body(self) -> ProxyBody {
        self.boxed()
    }
}

impl RequestBody for () {
    fn into_proxy_body(self) -> ProxyBody {
        empty()
    }
}

/// A short plain-text response.
pub fn text_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
