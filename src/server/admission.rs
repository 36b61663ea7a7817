//! `POST /validate`: the ValidatingWebhook endpoint (`admission.k8s.io/v1`
//! AdmissionReview) for SigningKeys and AuthPolicies. Translates HTTP to
//! [`crate::admission::review`] and back; a body that is not an AdmissionReview gets a
//! `400` naming what is wrong.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, META_API_VERSION_V1, META_KIND, Operation,
};
use kube::core::response::{StatusCause, StatusDetails};
use kube::core::{DynamicObject, Status};

use super::AppState;
use crate::admission::{self, Kind};
use crate::api::GROUP;

/// Two copies of one of our objects (object and oldObject) fit many times over.
pub(super) const MAX_BODY_BYTES: usize = 1024 * 1024;

pub async fn validate(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let request = match parse(&body) {
        Ok(request) => request,
        Err(message) => {
            state.metrics.admission("", "", "malformed");
            return (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response();
        }
    };
    let operation = match request.operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    };
    let kind = (request.kind.group == GROUP)
        .then(|| Kind::from_name(&request.kind.kind))
        .flatten();
    // The label is one of our kinds or `other`: the request's own `kind` is whatever the
    // caller wrote, and a label per distinct value would grow `/metrics` without bound.
    let kind_label = kind.map_or("other", Kind::as_str);
    let mut response = AdmissionResponse::from(&request);
    let (Some(kind), Operation::Create | Operation::Update, None) =
        (kind, &request.operation, &request.sub_resource)
    else {
        // Not ours to judge (a webhook configured wider than it should be, a deletion, a
        // status write): allowed, so a misconfiguration never blocks a cluster.
        state.metrics.admission(kind_label, operation, "skipped");
        return Json(response.into_review()).into_response();
    };
    let Some(object) = &request.object else {
        state
            .metrics
            .admission(kind.as_str(), operation, "malformed");
        return (
            StatusCode::BAD_REQUEST,
            format!("request.object is missing in a {operation} review\n"),
        )
            .into_response();
    };
    let object = serde_json::to_value(object).unwrap_or_default();
    let old = match (&request.operation, &request.old_object) {
        (Operation::Update, Some(old)) => serde_json::to_value(old).ok(),
        _ => None,
    };
    let verdict = admission::review(
        kind,
        &object,
        old.as_ref(),
        request.namespace.as_deref(),
        state.signing_keys.as_ref(),
        state.clock.now(),
    );
    // The request's name is empty on a CREATE from generateName; the object may have one.
    let name = Some(request.name.as_str())
        .filter(|n| !n.is_empty())
        .or_else(|| object.pointer("/metadata/name").and_then(|n| n.as_str()))
        .unwrap_or("(unnamed)");
    // The apiserver always sends the namespace; a hand-written review may carry it only
    // in the object.
    let namespace = request.namespace.as_deref().or_else(|| {
        object
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
    });
    let name = match namespace {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_owned(),
    };
    let result = if !verdict.allowed() {
        let reasons: Vec<String> = verdict.refusals.iter().map(ToString::to_string).collect();
        let message = format!(
            "{} {name} is invalid: {}",
            kind.as_str(),
            reasons.join("; ")
        );
        response.allowed = false;
        response.result = Status::failure(&message, "Invalid")
            .with_code(422)
            .with_details(StatusDetails {
                name: request.name.clone(),
                group: GROUP.to_owned(),
                kind: kind.as_str().to_owned(),
                uid: String::new(),
                causes: verdict
                    .refusals
                    .iter()
                    .map(|e| StatusCause {
                        reason: "FieldValueInvalid".to_owned(),
                        message: e.message.clone(),
                        field: e.field.clone(),
                    })
                    .collect(),
                retry_after_seconds: 0,
            });
        "denied"
    } else if verdict.warnings.is_empty() {
        "allowed"
    } else {
        "warned"
    };
    if !verdict.warnings.is_empty() {
        response.warnings = Some(verdict.warnings);
    }
    state.metrics.admission(kind.as_str(), operation, result);
    Json(response.into_review()).into_response()
}

/// Why a request body is not an AdmissionReview this endpoint answers (a 400).
#[derive(Debug, thiserror::Error)]
enum ParseError {
    #[error("an AdmissionReview is at most {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("not an AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "expected kind {META_KIND} with apiVersion {META_API_VERSION_V1} (set admissionReviewVersions: [v1]), got kind {kind:?} apiVersion {api_version:?}"
    )]
    WrongType { kind: String, api_version: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("request.uid is empty: the answer could not be matched to it")]
    NoUid,
}

fn parse(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, ParseError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ParseError::TooLarge);
    }
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    if review.types.kind != META_KIND || review.types.api_version != META_API_VERSION_V1 {
        return Err(ParseError::WrongType {
            kind: review.types.kind,
            api_version: review.types.api_version,
        });
    }
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| ParseError::NoRequest)?;
    if request.uid.is_empty() {
        return Err(ParseError::NoUid);
    }
    Ok(request)
}
