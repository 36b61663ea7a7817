//! A gRPC ext_authz client built from the same Envoy protos as the server, and the
//! translation of its answers into what an HTTP `/authz` answer says, to compare both.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};

/// The context extension naming the policy.
pub const POLICY: &str = "authplane.io/policy";

/// Serving settings with a gRPC listener on a loopback port.
pub fn settings() -> authplane::driver::serve::Settings {
    let mut settings = super::test_settings();
    settings.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
    settings
}

pub async fn client(addr: SocketAddr) -> AuthorizationClient<tonic::transport::Channel> {
    AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// A check as Envoy sends it: the request's headers (lower-case, with pseudo-headers),
/// and the policy in the context extensions when `policy` is given.
pub fn check_request(policy: Option<&str>, headers: &[(&str, &str)]) -> CheckRequest {
    let mut all: std::collections::HashMap<String, String> = [
        (":method", "GET"),
        (":path", "/authz/other/policy"),
        (":authority", "shop.example"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (name, value) in headers {
        all.insert(name.to_ascii_lowercase(), (*value).to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/pay".into(),
                    host: "shop.example".into(),
                    headers: all,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: policy
                .map(|p| [(POLICY.to_owned(), p.to_owned())].into_iter().collect())
                .unwrap_or_default(),
            ..Default::default()
        }),
    }
}

/// What a check answered, in HTTP terms: the status Envoy would give the request (200
/// when allowed), the gRPC code, and every header it sets (lower-case names), a removed
/// header as `""`.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: u16,
    pub code: i32,
    pub headers: BTreeMap<String, String>,
    pub removed: Vec<String>,
}

pub fn verdict(response: &CheckResponse) -> Verdict {
    let code = response.status.as_ref().map_or(0, |s| s.code);
    let mut headers = BTreeMap::new();
    let mut removed = Vec::new();
    let mut set = |options: &[HeaderValueOption]| {
        for option in options {
            let header = option.header.as_ref().unwrap();
            // Every header is an overwrite: a client's copy never stands beside ours.
            #[allow(deprecated)]
            let append = option.append.as_ref().map(|a| a.value);
            assert_eq!(append, Some(false), "{} appended", header.key);
            assert_eq!(
                option.append_action, 2,
                "{}: OVERWRITE_IF_EXISTS_OR_ADD",
                header.key
            );
            headers.insert(header.key.to_ascii_lowercase(), header.value.clone());
        }
    };
    let status = match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            set(&ok.headers);
            removed = ok.headers_to_remove.clone();
            200
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            set(&denied.headers);
            denied.status.as_ref().unwrap().code as u16
        }
        other => panic!("not an OK or denied response: {other:?}"),
    };
    assert_eq!(
        code == 0,
        status == 200,
        "gRPC code {code} with HTTP {status}"
    );
    Verdict {
        status,
        code,
        headers,
        removed,
    }
}

/// The same, of an HTTP `/authz` answer: its status and the headers `names` it carries,
/// an empty one as removed (what the gRPC answer does with an identity it does not
/// have).
pub fn http_verdict(
    response: &reqwest::Response,
    names: &[&str],
) -> (u16, BTreeMap<String, String>, Vec<String>) {
    let mut headers = BTreeMap::new();
    let mut removed = Vec::new();
    for name in names {
        if let Some(value) = response.headers().get(*name) {
            let value = value.to_str().unwrap().to_owned();
            if value.is_empty() {
                removed.push((*name).to_owned());
            } else {
                headers.insert((*name).to_owned(), value);
            }
        }
    }
    (response.status().as_u16(), headers, removed)
}
