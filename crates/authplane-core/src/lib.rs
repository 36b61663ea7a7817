//! authplane's core: pure and synchronous. No tokio, axum, kube client, reqwest or
//! prometheus can be used here, because this crate does not depend on them (the
//! workspace enforces what a convention would only ask). Time is passed in; I/O, tasks
//! and metrics belong to the runtime (the `authplane` crate), which implements the
//! small traits the core asks for ([`index::PolicyEnv`], [`policy::DecisionMeters`],
//! [`policy::remote::RemoteIssuers`]).
//!
//! - `api`: the custom resources, their CRDs, and the checks the apiserver applies
//!   (structural schema, CEL rules compiled once per process).
//! - `keys`: key material, JWKs, the key lifecycle planner, the stored form.
//! - `reconcile`: one SigningKey's keys brought up to date, as data in and data out.
//! - `policy`: an AuthPolicy compiled, and the decision for one request; rollout
//!   bucketing and progression.
//! - `index`: the incremental index the drivers feed (`apply`/`delete`), which publishes
//!   a [`snapshot::Snapshot`] for the server; `external_quota` caps the external issuers
//!   one namespace's policies may use.
//! - `issuer_claims`: which issuer paths a SigningKey may publish, and who keeps a path
//!   several claim.
//! - `refresh`: refresh-token families (issue, rotate, grace, reuse, expiry) as data.
//! - `revocation`: the Revocation index and the immutable set the decision reads.
//! - `admission`: the rules of the admission webhook.
//! - `token_review`: TokenReview, a verified token as a Kubernetes user.
//! - `token_clients`: the TokenClient index the token endpoint reads.
//! - `token_endpoint`: the token endpoint's requests, errors and access-token claims.
//! - `token`: minting for development and tests.
//! - `clock`: time as an input.

// Nothing here needs unsafe code; the CI fuzz smoke runs without AddressSanitizer on
// the strength of it.
#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod attach;
pub mod clock;
pub mod external_quota;
pub mod index;
pub mod issuer_claims;
pub mod keys;
pub mod policy;
pub mod reconcile;
pub mod refresh;
pub mod revocation;
pub mod snapshot;
pub mod token;
pub mod token_clients;
pub mod token_endpoint;
pub mod token_review;
