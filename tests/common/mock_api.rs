//! kube-rs's mock API service (tower-test): each test takes the requests it expects, in
//! order, and answers them as the apiserver would.

use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client whose every request the returned handle takes.
pub fn client() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// Fails, instead of hanging, when the code under test waits for an answer to a request
/// the test does not expect.
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("a request the test does not expect is waiting for an answer")
}

/// A request taken from the handle, not answered yet.
pub struct Taken {
    pub content_type: Option<String>,
    /// The JSON it carried (`Null` when it carried nothing).
    pub body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

/// Takes the next request, which must be `method path`.
pub async fn take(handle: &mut Handle, method: &str, path: &str) -> Taken {
    let (request, respond) = within(handle.next_request())
        .await
        .unwrap_or_else(|| panic!("expected {method} {path}"));
    assert_eq!(
        (request.method().as_str(), request.uri().path()),
        (method, path)
    );
    let content_type = request
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Taken {
        content_type,
        body,
        respond,
    }
}

impl Taken {
    pub fn answer(self, status: u16, answer: &Value) {
        self.respond.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(answer).unwrap()))
                .unwrap(),
        );
    }
}

/// Takes the next request, which must be `method path`, and answers it with `status` and
/// `answer`, or, when `answer` is null, with `echo` of the body it carried (the
/// apiserver answers a write with the object). Returns that body.
pub async fn expect_echoing(
    handle: &mut Handle,
    method: &str,
    path: &str,
    status: u16,
    answer: Value,
    echo: impl FnOnce(&Value) -> Value,
) -> Value {
    let taken = take(handle, method, path).await;
    let body = taken.body.clone();
    let answer = if answer.is_null() {
        echo(&body)
    } else {
        answer
    };
    taken.answer(status, &answer);
    body
}
