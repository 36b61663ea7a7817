//! `GET /status`: what this replica serves, in one document, for the status page (`/ui`)
//! and for scripts: each issuer's keys with their lifecycle instants, each policy's status
//! and the decisions it counted, and the Revocations in force.
//!
//! Only what `/status/{namespace}/{name}`, the JWKS and `/metrics` show already: public
//! kids and algorithms, never key material; Revocations by kind of match, never the
//! subject, token id or session id they name.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::api::{AuthPolicyStatus, Mode};
use crate::metrics::{DecisionLabels, Metrics};
use crate::policy::Rejection;

/// Issuers and policies listed at most, each: the page polls the document every few
/// seconds, and 10,000 policies would make it megabytes. `?namespace=` narrows it.
pub const MAX_LISTED: usize = 500;

#[derive(Deserialize)]
pub struct Filter {
    /// Only the objects of this namespace.
    namespace: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    /// The server's clock when it answered: the page shows times relative to it.
    now: Timestamp,
    issuers: Listed<Issuer>,
    policies: Listed<Policy>,
    revocations: Listed<Revocation>,
    /// Sessions authplane ended in the token store (logouts, reused refresh tokens): how
    /// many per SigningKey and reason, never which.
    ended_sessions: Vec<EndedSessions>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EndedSessions {
    /// The SigningKey, `namespace/name`.
    issuer: String,
    /// `logout` or `compromised` (a reused refresh token).
    reason: &'static str,
    count: usize,
}

/// Up to [`MAX_LISTED`] items, and how many there are in all.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed<T> {
    items: Vec<T>,
    total: usize,
}

impl<T> Listed<T> {
    /// The first [`MAX_LISTED`] of `all` (in order), described by `describe`: only those
    /// are described (a policy's status and counts cost something).
    fn of<S>(all: Vec<S>, describe: impl FnMut(S) -> T) -> Self {
        let total = all.len();
        let items = all.into_iter().take(MAX_LISTED).map(describe).collect();
        Self { items, total }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Issuer {
    namespace: String,
    name: String,
    issuer: String,
    jwks_uri: String,
    keys: Vec<Key>,
    /// `spec.rotation`, in seconds.
    rotation: Rotation,
    /// When the key after the newest one signs, on schedule; it is published
    /// `prePublish` before.
    next_rotation_at: Option<Timestamp>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Rotation {
    every_seconds: i64,
    pre_publish_seconds: i64,
    retain_for_seconds: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Key {
    kid: String,
    alg: &'static str,
    /// `Next`, `Active` or `Retired` now.
    state: &'static str,
    created: Timestamp,
    activates_at: Timestamp,
    retires_at: Option<Timestamp>,
    removed_at: Option<Timestamp>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Policy {
    namespace: String,
    name: String,
    mode: Mode,
    /// As `/status/{namespace}/{name}` reports it.
    status: AuthPolicyStatus,
    /// This replica's decisions since it started, by decision and reason.
    decisions: Decisions,
}

#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Decisions {
    allow: u64,
    /// Refused (enforced users), by reason.
    deny: BTreeMap<&'static str, u64>,
    /// Passed but would have been refused (audited users), by reason.
    would_deny: BTreeMap<&'static str, u64>,
    /// Passed on the legacy session cookie, by why the token did not do.
    legacy_session: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Revocation {
    namespace: String,
    name: String,
    issuer: String,
    /// `null`: under every AuthPolicy.
    scope: Option<String>,
    matches: &'static str,
    reason: &'static str,
    created: Option<Timestamp>,
    lapses_at: Option<Timestamp>,
}

pub async fn overview(
    State(state): State<Arc<AppState>>,
    Query(filter): Query<Filter>,
) -> Response {
    let now = state.clock.now();
    let wanted = |namespace: &str| filter.namespace.as_deref().is_none_or(|n| n == namespace);
    let snapshot = state.registry.load();

    let mut issuers: Vec<_> = snapshot
        .issuers
        .values()
        .filter(|i| wanted(&i.namespace))
        .collect();
    issuers.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let issuers = Listed::of(issuers, |i| Issuer {
        namespace: i.namespace.clone(),
        name: i.name.clone(),
        issuer: i.issuer.clone(),
        jwks_uri: i.jwks_uri.clone(),
        keys: i
            .keys
            .iter()
            .map(|k| Key {
                kid: k.kid.clone(),
                alg: k.alg.as_str(),
                state: k.state(now).as_str(),
                created: k.created,
                activates_at: k.activates_at,
                retires_at: k.retires_at,
                removed_at: k.removed_at,
            })
            .collect(),
        rotation: Rotation {
            every_seconds: i.rotation.every.as_secs(),
            pre_publish_seconds: i.rotation.pre_publish.as_secs(),
            retain_for_seconds: i.rotation.retain_for.as_secs(),
        },
        next_rotation_at: i.rotation.next_activation(&i.keys),
    });

    let mut policies: Vec<_> = snapshot
        .policies
        .iter()
        .filter(|(id, _)| wanted(&id.namespace))
        .collect();
    policies.sort_by(|a, b| a.0.cmp(b.0));
    let policies = Listed::of(policies, |(id, policy)| {
        let mut status = policy.status(&state.base_url, now, |_| None);
        state.registry.reported.settle(id, &mut status.conditions);
        Policy {
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            mode: policy.mode,
            status,
            decisions: decisions(&state.metrics, &id.namespace, &id.name),
        }
    });

    let revocations = state.registry.revocations();
    let ended_sessions = revocations
        .sessions()
        .counts(now.as_second())
        .into_iter()
        .filter(|c| wanted(&c.key.namespace))
        .map(|c| EndedSessions {
            issuer: c.key.to_string(),
            reason: c.reason,
            count: c.count,
        })
        .collect();
    let in_force: Vec<_> = revocations
        .in_force()
        .iter()
        .filter(|r| wanted(&r.id.namespace))
        .collect();
    let revocations = Listed::of(in_force, |r| Revocation {
        namespace: r.id.namespace.clone(),
        name: r.id.name.clone(),
        issuer: r.issuer.clone(),
        scope: r.scope.clone(),
        matches: r.matches,
        reason: r.reason,
        created: Timestamp::from_second(r.created).ok(),
        lapses_at: r.lapses_at.and_then(|t| Timestamp::from_second(t).ok()),
    });

    (
        super::page::no_store(),
        Json(Overview {
            now,
            issuers,
            policies,
            revocations,
            ended_sessions,
        }),
    )
        .into_response()
}

/// The decisions `/metrics` counted for one policy: read, never created (a lookup of a
/// series that does not exist adds nothing to `/metrics`).
fn decisions(metrics: &Metrics, namespace: &str, policy: &str) -> Decisions {
    let count = |decision: &str, reason: &str| {
        metrics
            .decisions
            .get(&DecisionLabels {
                namespace: namespace.to_owned(),
                policy: policy.to_owned(),
                decision: decision.to_owned(),
                reason: reason.to_owned(),
            })
            .map_or(0, |counter| counter.get())
    };
    let mut decisions = Decisions {
        allow: count("allow", ""),
        ..Decisions::default()
    };
    for rejection in Rejection::ALL {
        let reason = rejection.reason();
        for (decision, counts) in [
            ("deny", &mut decisions.deny),
            ("would_deny", &mut decisions.would_deny),
            ("legacy_session", &mut decisions.legacy_session),
        ] {
            let n = count(decision, reason);
            if n > 0 {
                counts.insert(reason, n);
            }
        }
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_items_are_described_and_all_are_counted() {
        let mut described = 0;
        let listed = Listed::of((0..MAX_LISTED + 7).collect(), |n| {
            described += 1;
            n * 2
        });
        assert_eq!(listed.total, MAX_LISTED + 7);
        assert_eq!(listed.items.len(), MAX_LISTED);
        assert_eq!(described, MAX_LISTED);
        assert_eq!(listed.items[..2], [0, 2]);
    }
}
