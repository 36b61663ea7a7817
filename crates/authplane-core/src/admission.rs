//! Admission review of SigningKeys and AuthPolicies, as pure functions: the object (and,
//! on UPDATE, the object it replaces) in, refusals and warnings out.
//!
//! Refusals are exactly what [`Validate`] finds, the one implementation dev mode also
//! applies (it includes the CRD's CEL rules), plus the few rules that need the previous
//! object. Everything else that is risky but legal is a warning: the webhook must never
//! stand between a platform team and a rollback.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::issuer_claims::{IssuerScope, Placement};
use crate::policy::lifetime;
use crate::policy::progression::Schedule;
use crate::snapshot::Snapshot;

use crate::api::{
    AuthPolicy, FieldError, Mode, ObjectKey, Revocation, SigningKey, TokenClient, Validate,
    from_value, read_object,
};

/// The runtime's default floor of external key set refreshes (`--external-refresh-floor`).
const REFRESH_FLOOR: SignedDuration = SignedDuration::from_secs(30);
/// A token lifetime most issuers stay within (Entra ID, Kubernetes service accounts and
/// most OIDC providers default to an hour or less).
/// How long common verifiers cache a JWKS regardless of `max-age` (Envoy's `jwt_authn`
/// remote JWKS defaults to 5 minutes).
const TYPICAL_JWKS_CACHE: SignedDuration = SignedDuration::from_mins(5);
/// More published keys than this makes every verifier's JWKS fetch and kid lookup heavier
/// for nothing: no token needs that many.
const MANY_KEYS: i64 = 10;
/// A raise of the enforced share by more than this many points in one edit is warned
/// about: the migration playbook goes 10, 50, 100.
const LARGE_STEP: f64 = 50.0;

/// The kinds this webhook reviews.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SigningKey,
    AuthPolicy,
    Revocation,
    TokenClient,
}

impl Kind {
    pub fn from_name(kind: &str) -> Option<Self> {
        match kind {
            "SigningKey" => Some(Kind::SigningKey),
            "AuthPolicy" => Some(Kind::AuthPolicy),
            "Revocation" => Some(Kind::Revocation),
            "TokenClient" => Some(Kind::TokenClient),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SigningKey => "SigningKey",
            Kind::AuthPolicy => "AuthPolicy",
            Kind::Revocation => "Revocation",
            Kind::TokenClient => "TokenClient",
        }
    }
}

/// Which SigningKeys exist: the operator's watch cache in `run`, the manifests in `dev`.
pub trait SigningKeyIndex: Send + Sync {
    fn contains(&self, id: &ObjectKey) -> bool;

    /// The SigningKey's `maxTokenLifetime`, when it is known.
    fn max_token_lifetime(&self, _id: &ObjectKey) -> Option<SignedDuration> {
        None
    }

    /// What the SigningKeys already hold (issuer paths, Secrets) as the serving index
    /// has them, and where issuers may be published. `None` (tests, tools without a
    /// driver): nothing is checked against them.
    fn claims(&self) -> Option<Claims> {
        None
    }
}

/// The issuer paths and Secrets held, for the rules that keep one SigningKey off
/// another's.
#[derive(Clone)]
pub struct Claims {
    pub scope: Arc<IssuerScope>,
    pub snapshot: Arc<Snapshot>,
}

/// An index that knows no SigningKey (tests, and tools without a driver).
pub struct NoSigningKeys;

impl SigningKeyIndex for NoSigningKeys {
    fn contains(&self, _: &ObjectKey) -> bool {
        false
    }
}

/// The outcome of one review: allowed when `refusals` is empty.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    pub refusals: Vec<FieldError>,
    pub warnings: Vec<String>,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.refusals.is_empty()
    }

    fn refused(refusals: Vec<FieldError>) -> Self {
        Self {
            refusals,
            warnings: Vec::new(),
        }
    }

    fn warn(&mut self, field: &str, message: impl AsRef<str>) {
        self.warnings.push(format!("{field}: {}", message.as_ref()));
    }
}

/// Reviews `object` (CREATE) or the change from `old` to `object` (UPDATE) at `now`.
/// `namespace` is the request's namespace, used when the object does not carry one.
pub fn review(
    kind: Kind,
    object: &Value,
    old: Option<&Value>,
    namespace: Option<&str>,
    index: &dyn SigningKeyIndex,
    now: Timestamp,
) -> Verdict {
    let object = with_namespace(object, namespace);
    match kind {
        Kind::SigningKey => match read_object::<SigningKey>(&object) {
            Ok(key) => signing_key(
                &key,
                old.and_then(|o| previous(o, namespace)).as_ref(),
                index,
            ),
            Err(refused) => Verdict::refused(refused),
        },
        Kind::AuthPolicy => match read_object::<AuthPolicy>(&object) {
            Ok(policy) => auth_policy(
                &policy,
                old.and_then(|o| previous(o, namespace)).as_ref(),
                index,
                now,
            ),
            Err(refused) => Verdict::refused(refused),
        },
        Kind::Revocation => match read_object::<Revocation>(&object) {
            Ok(revocation) => self::revocation(&revocation, index),
            Err(refused) => Verdict::refused(refused),
        },
        Kind::TokenClient => match read_object::<TokenClient>(&object) {
            Ok(client) => token_client(&client, index),
            Err(refused) => Verdict::refused(refused),
        },
    }
}

/// TokenClient: [`Validate`]; an access-token lifetime above its SigningKey's
/// `maxTokenLifetime` is refused (every policy would refuse such tokens); a SigningKey
/// that does not exist (yet) is a warning, as everywhere (GitOps applies in any order).
pub fn token_client(client: &TokenClient, index: &dyn SigningKeyIndex) -> Verdict {
    let refusals = client.validate();
    if !refusals.is_empty() {
        return Verdict::refused(refusals);
    }
    let namespace = ObjectKey::of(&client.metadata).namespace;
    let key = client.spec.signing_key_id(&namespace);
    let lifetime = client.spec.access_token_lifetime.value();
    if !index.contains(&key) {
        let mut verdict = Verdict::default();
        verdict.warn(
            "spec.signingKeyRef",
            format!(
                "SigningKey {key} does not exist: the token endpoint issues nothing for this client until it does"
            ),
        );
        return verdict;
    }
    match index.max_token_lifetime(&key) {
        Some(max) if lifetime > max => Verdict::refused(vec![FieldError::new(
            "spec.accessTokenLifetime",
            format!(
                "{lifetime:#} is longer than SigningKey {key}'s maxTokenLifetime {max:#}: every AuthPolicy would refuse such tokens; shorten it or raise the key's spec.maxTokenLifetime"
            ),
        )]),
        _ => Verdict::default(),
    }
}

/// Revocation: [`Validate`], and warnings about its scope and its SigningKey.
pub fn revocation(revocation: &Revocation, index: &dyn SigningKeyIndex) -> Verdict {
    let mut checked = revocation.clone();
    // A CREATE from generateName may be reviewed before the name is known.
    if checked.metadata.name.as_deref().unwrap_or("").is_empty()
        && checked.metadata.generate_name.is_some()
    {
        checked.metadata.name = Some("generated".to_owned());
    }
    let refusals = checked.validate();
    if !refusals.is_empty() {
        return Verdict::refused(refusals);
    }
    let mut verdict = Verdict::default();
    let namespace = ObjectKey::of(&revocation.metadata).namespace;
    match revocation.spec.signing_key_id(&namespace) {
        Some(key) => {
            if !index.contains(&key) {
                verdict.warn(
                    "spec.signingKeyRef",
                    format!(
                        "SigningKey {key} does not exist: the revocation counts, but cannot lapse until it does (its maxTokenLifetime is unknown)"
                    ),
                );
            }
            if key.namespace != namespace {
                verdict.warn(
                    "metadata.namespace",
                    format!(
                        "applies only to the AuthPolicies of namespace {namespace}; create it in {} to revoke the tokens everywhere",
                        key.namespace
                    ),
                );
            }
        }
        None => verdict.warn(
            "spec.issuer",
            format!(
                "applies only to the AuthPolicies of namespace {namespace}; unless expiresAt is set, it lasts as long as those policies accept this issuer's tokens (their maxTokenLifetime, plus leeway), for ever while one of them sets none, and a day while none accepts the issuer"
            ),
        ),
    }
    verdict
}

fn with_namespace(object: &Value, namespace: Option<&str>) -> Value {
    let mut object = object.clone();
    if let (Some(namespace), Some(meta)) = (
        namespace,
        object.get_mut("metadata").and_then(Value::as_object_mut),
    ) {
        meta.entry("namespace")
            .or_insert_with(|| Value::String(namespace.to_owned()));
    }
    object
}

/// The stored object an UPDATE replaces. One that no longer parses (written by an older
/// version, say) only disables the comparisons: it is not the requester's fault.
fn previous<K: serde::de::DeserializeOwned>(old: &Value, namespace: Option<&str>) -> Option<K> {
    from_value(&with_namespace(old, namespace)).ok()
}

/// SigningKey: [`Validate`], one rule that needs the previous object (the Secret name),
/// the rules that need the other SigningKeys (issuer paths and Secrets are not shared),
/// and warnings.
pub fn signing_key(
    key: &SigningKey,
    old: Option<&SigningKey>,
    index: &dyn SigningKeyIndex,
) -> Verdict {
    let refusals = key.validate();
    if !refusals.is_empty() {
        return Verdict::refused(refusals);
    }
    let mut verdict = Verdict::default();
    if let Some(claims) = index.claims() {
        not_anothers(key, old, &claims, &mut verdict);
    }
    if let Some(old) = old {
        // The Secret is the source of truth for the keys: a new name starts from an empty
        // Secret, so every token signed by the current keys would stop verifying at once.
        if old.secret_name() != key.secret_name() {
            verdict.refusals.push(FieldError::new(
                "spec.secretName",
                format!(
                    "cannot change from {:?} to {:?} on an existing SigningKey: the keys live in that Secret, and new keys would break every token signed so far. Keep {:?} (accepted), or create a new SigningKey and move the AuthPolicies to it",
                    old.secret_name(),
                    key.secret_name(),
                    old.secret_name()
                ),
            ));
            return verdict;
        }
        let (was, is) = (old.key_policy(), key.key_policy());
        if was.algorithm != is.algorithm || was.rsa_bits != is.rsa_bits {
            let describe = |p: &crate::keys::lifecycle::KeyPolicy| match p.algorithm.as_str() {
                a if a.starts_with("RS") || a.starts_with("PS") => format!("{a}/{}", p.rsa_bits),
                a => a.to_owned(),
            };
            verdict.warn(
                "spec.algorithm",
                format!(
                    "changes from {} to {}: a new key is published now and signs in {} (prePublish); tokens of the old key verify until they expire. Verifiers pinned to {} will refuse the new tokens: check them first",
                    describe(&was),
                    describe(&is),
                    key.spec.rotation.pre_publish,
                    was.algorithm.as_str()
                ),
            );
        }
        if old.spec.issuer != key.spec.issuer {
            verdict.warn(
                "spec.issuer",
                "changes: tokens that carry the old iss stop verifying at once, and discovery and the JWKS move to the new issuer's path",
            );
        }
    }
    let rotation = &key.spec.rotation;
    let policy = key.key_policy();
    let longest = key.spec.max_token_lifetime();
    if policy.retain_for < longest {
        verdict.warn(
            "spec.rotation.retainFor",
            format!(
                "{} is shorter than the longest token lifetime (spec.maxTokenLifetime, {}): a retired key would leave the JWKS while its tokens are still valid. Make it cover your longest token lifetime",
                rotation.retain_for,
                key.spec
                    .max_token_lifetime
                    .as_ref()
                    .map_or_else(|| "1h by default".to_owned(), ToString::to_string)
            ),
        );
    }
    if policy.pre_publish < TYPICAL_JWKS_CACHE {
        verdict.warn(
            "spec.rotation.prePublish",
            format!(
                "{} is shorter than many verifiers cache a JWKS (Envoy: 5m): they may see tokens of a key they do not know yet",
                rotation.pre_publish
            ),
        );
    }
    // One Active, one Next, and a Retired key for every rotation within retainFor.
    let every = policy.every.as_secs().max(1);
    let published = 2 + (policy.retain_for.as_secs() + every - 1) / every;
    if published > MANY_KEYS {
        verdict.warn(
            "spec.rotation",
            format!(
                "every {} with retainFor {} keeps about {published} keys in the JWKS: rotate less often or retain for less",
                rotation.every, rotation.retain_for
            ),
        );
    }
    verdict
}

/// A SigningKey takes nothing another holds: an issuer path on this server must be its
/// namespace's (or the platform's grant) and not served for another SigningKey; its
/// Secrets must be no other SigningKey's. A new claim (a creation, a changed issuer) is
/// refused; a conflict that already exists only warns, so that an unrelated edit (a
/// rotation after a leak) is never blocked.
fn not_anothers(
    key: &SigningKey,
    old: Option<&SigningKey>,
    claims: &Claims,
    verdict: &mut Verdict,
) {
    let id = ObjectKey::of(&key.metadata);
    let external_url = claims.scope.external_url();
    let issuer = key.issuer(external_url);
    // A new claim (a creation, or a changed issuer) is refused; an old one warned about.
    let claiming = old.is_none_or(|old| old.issuer(external_url) != issuer);
    let object = |verdict: &mut Verdict, field: &str, message: String| {
        if claiming {
            verdict.refusals.push(FieldError::new(field, message));
        } else {
            verdict.warn(field, message);
        }
    };
    let field = if key.spec.issuer.is_some() {
        "spec.issuer"
    } else {
        "metadata.name"
    };
    match claims.scope.place(&id.namespace, &issuer) {
        Err(e) => object(
            verdict,
            field,
            format!("{issuer:?} cannot be served by authplane: {e}"),
        ),
        Ok(Placement::Elsewhere) => verdict.warn(
            field,
            format!(
                "{issuer:?} is not on authplane's URL ({external_url}): it is published elsewhere, so no discovery, JWKS or revocation endpoint is served for it; publish the JWKS (ConfigMap {}-jwks) at its jwks_uri yourself",
                id.name
            ),
        ),
        Ok(Placement::Here { path }) => {
            if let Some(owner) = claims.snapshot.path_owners.get(&path)
                && owner.as_ref() != Some(&id)
            {
                let holder = owner
                    .as_ref()
                    .map_or_else(|| "other SigningKeys".to_owned(), |o| format!("SigningKey {o}"));
                object(
                    verdict,
                    field,
                    format!(
                        "issuer path {path:?} is already claimed by {holder}: an issuer path stays with the SigningKey that claimed it first; choose another issuer"
                    ),
                );
            }
        }
    }
    for name in [key.secret_name(), key.signer_secret_name()] {
        let secret = ObjectKey {
            namespace: id.namespace.clone(),
            name,
        };
        if let Some(user) = claims.snapshot.secrets.get(&secret)
            && *user != id
        {
            let message = format!(
                "Secret {:?} holds the keys of SigningKey {user}: a Secret belongs to one SigningKey; choose another spec.secretName",
                secret.name
            );
            if old.is_none() {
                verdict
                    .refusals
                    .push(FieldError::new("spec.secretName", message));
            } else {
                verdict.warn("spec.secretName", message);
            }
            // Its signer Secret is then another's too: one message says it.
            break;
        }
    }
}

/// Every `signingKeyRef` with its field path and the key it names (namespace defaulted
/// to the policy's).
fn signing_key_refs(policy: &AuthPolicy) -> Vec<(String, ObjectKey)> {
    let namespace = ObjectKey::of(&policy.metadata).namespace;
    policy
        .spec
        .issuers
        .iter()
        .enumerate()
        .filter_map(|(i, issuer)| {
            Some((
                format!("spec.issuers[{i}].signingKeyRef"),
                issuer.signing_key_id(&namespace)?,
            ))
        })
        .collect()
}

/// The share of users under enforcement (Disabled and Audit enforce nobody).
/// A stepped rollout starts at its first step.
fn enforced_share(policy: &AuthPolicy) -> f64 {
    let rollout = &policy.spec.rollout;
    match rollout.mode {
        Mode::Enforce => match rollout.steps.first() {
            Some(first) => first.min(rollout.percentage),
            None => rollout.percentage,
        },
        Mode::Disabled | Mode::Audit => 0.0,
    }
}

/// The share enforced now under the stored object: its status says where a stepped
/// rollout stands.
fn share_in_force(policy: &AuthPolicy) -> f64 {
    let rollout = &policy.spec.rollout;
    if rollout.mode != Mode::Enforce {
        return 0.0;
    }
    let status = policy.status.as_ref();
    match status.and_then(|s| s.effective_percentage) {
        Some(share) if !rollout.steps.is_empty() => share,
        _ => Schedule::of(rollout, status.and_then(|s| s.rollout.as_ref())).entries[0].1,
    }
}

/// The share enforced right after `policy` replaces `old`, as every replica will compute
/// it from the recorded progression.
fn share_after_edit(policy: &AuthPolicy, old: &AuthPolicy) -> f64 {
    let rollout = &policy.spec.rollout;
    if rollout.mode != Mode::Enforce {
        return 0.0;
    }
    let old_rollout = &old.spec.rollout;
    if old_rollout.mode == Mode::Enforce
        && !rollout.steps.is_empty()
        && rollout.steps == old_rollout.steps
    {
        // The same progression goes on from where it stands (which may be past the step
        // its status recorded last).
        return share_in_force(old).min(rollout.percentage);
    }
    let recorded = old.status.as_ref().and_then(|s| s.rollout.as_ref());
    Schedule::of(rollout, recorded).entries[0].1
}

/// Token lifetimes that differ from the SigningKeys' own: a policy that accepts longer
/// tokens of a key, and a policy limit that cannot lengthen a key's.
fn lifetime_warnings(policy: &AuthPolicy, index: &dyn SigningKeyIndex, verdict: &mut Verdict) {
    let spec = &policy.spec;
    let namespace = ObjectKey::of(&policy.metadata).namespace;
    for (i, issuer) in spec.issuers.iter().enumerate() {
        let Some(key) = issuer.signing_key_id(&namespace) else {
            continue;
        };
        let known = index.max_token_lifetime(&key);
        let key_limit = known.unwrap_or(crate::api::DEFAULT_MAX_TOKEN_LIFETIME);
        if let Some(explicit) = lifetime::explicit(spec, issuer)
            && explicit > key_limit
        {
            verdict.warn(
                &format!("spec.issuers[{i}].maxTokenLifetime"),
                format!(
                    "accepts tokens of SigningKey {key} living up to {explicit:#}, longer than its own maxTokenLifetime ({key_limit:#}{}): tokens minted with --force or signed by hand pass here, and every Revocation of {key} is kept that long. To accept them under every policy, raise the SigningKey's maxTokenLifetime instead",
                    if known.is_some() { "" } else { " by default" }
                ),
            );
        } else if issuer.max_token_lifetime.is_none()
            && let (Some(own), Some(limit)) = (known, &spec.max_token_lifetime)
            && limit.value() > own
        {
            verdict.warn(
                "spec.maxTokenLifetime",
                format!(
                    "{limit} does not lengthen the limit of SigningKey {key} ({own:#}, its maxTokenLifetime): its longer tokens are refused (token_lifetime_too_long). To accept them here, set spec.issuers[{i}].maxTokenLifetime"
                ),
            );
        }
    }
}

/// A TokenReview mapping that turns off one of the apiserver's safe defaults.
fn token_review_warnings(mapping: &crate::api::TokenReviewSpec, verdict: &mut Verdict) {
    if mapping.unprefixed_usernames() && mapping.username_claim() != "email" {
        verdict.warn(
            "spec.tokenReview.usernamePrefix",
            format!(
                "no prefix: usernames are the bare {} claim, so a token can name any user another authenticator (or another issuer of this policy) also has. Leave it unset for the issuer-URL prefix, or set one such as \"authplane:\"",
                mapping.username_claim()
            ),
        );
    }
    if mapping.allow_system_names {
        verdict.warn(
            "spec.tokenReview.allowSystemNames",
            "true: a token may name system: users and groups (system:masters is cluster-admin), so whoever can sign for these issuers can act as Kubernetes itself",
        );
    } else if mapping
        .username_prefix
        .as_deref()
        .is_some_and(|p| p.starts_with("system:"))
    {
        verdict.warn(
            "spec.tokenReview.usernamePrefix",
            "starts with system:, so every username would be a system: name and every token is refused (allowSystemNames is false)",
        );
    }
}

/// A step shorter than this shows too little traffic to judge before the next.
const SHORT_STEP_SECS: i64 = 10 * 60;

/// AuthPolicy: [`Validate`], then warnings: a SigningKey that does not exist, an unchecked
/// audience, enforcement raised by a large step, and a legacy session whose end has come
/// or is near at `reviewed_at`.
pub fn auth_policy(
    policy: &AuthPolicy,
    old: Option<&AuthPolicy>,
    index: &dyn SigningKeyIndex,
    reviewed_at: Timestamp,
) -> Verdict {
    let refusals = policy.validate();
    if !refusals.is_empty() {
        return Verdict::refused(refusals);
    }
    let mut verdict = Verdict::default();
    // A warning, not a refusal: GitOps tools apply in no particular order, and the policy
    // fails closed meanwhile (its tokens cannot verify, enforced requests are refused).
    for (field, key) in signing_key_refs(policy) {
        if !index.contains(&key) {
            verdict.warn(
                &field,
                format!(
                    "SigningKey {key} does not exist (yet): until it does, tokens of this issuer cannot verify and enforced requests are refused (issuer_unavailable)"
                ),
            );
        }
    }
    for (i, issuer) in policy.spec.issuers.iter().enumerate() {
        if let Some(refresh) = &issuer.refresh
            && issuer.issuer.is_some()
            && refresh.min_interval.value() < REFRESH_FLOOR
        {
            verdict.warn(
                &format!("spec.issuers[{i}].refresh.minInterval"),
                format!(
                    "{} is below authplane's refetch floor (30s unless its --external-refresh-floor says otherwise): the key set is fetched at most that often, also for unknown kids",
                    refresh.min_interval
                ),
            );
        }
    }
    if policy.spec.audiences.is_empty() {
        verdict.warn(
            "spec.audiences",
            "empty: aud is not checked, so tokens these issuers made for any other service are accepted too",
        );
    }
    lifetime_warnings(policy, index, &mut verdict);
    token_review_warnings(&policy.spec.token_review, &mut verdict);
    let now = enforced_share(policy);
    let before = old.map(enforced_share).unwrap_or(0.0);
    if now - before > LARGE_STEP {
        let from = match old.map(|o| o.spec.rollout.mode) {
            None => "on creation, with no Audit phase".to_owned(),
            Some(Mode::Disabled) => "from mode Disabled, with no Audit phase".to_owned(),
            Some(Mode::Audit) => "straight from Audit".to_owned(),
            Some(Mode::Enforce) => format!("from {before}% in one step"),
        };
        verdict.warn(
            "spec.rollout.percentage",
            format!(
                "enforces for {now}% of users {from}: steps of 10, 50, 100 after an Audit phase show who would be refused first (roll back with percentage 0)"
            ),
        );
    }
    if let Some(old) = old {
        let (before, after) = (share_in_force(old), share_after_edit(policy, old));
        // An explicit rollback (a lower percentage, or leaving Enforce) is meant; a
        // lower share as a side effect of new steps is the surprise to point out.
        let explicit = policy.spec.rollout.percentage < old.spec.rollout.percentage
            || policy.spec.rollout.mode != Mode::Enforce;
        if after < before && !explicit {
            verdict.warn(
                "spec.rollout.steps",
                format!(
                    "lowers the enforced share from {before}% to {after}% at once: users in buckets from {after}% to {before}% go back to audit (new steps start at their first step, or, when a stepped rollout is edited, at the highest step not above the share in force). To keep them enforced, start the steps at {before}"
                ),
            );
        }
    }
    let rollout = &policy.spec.rollout;
    if let Some(every) = &rollout.step_every
        && every.value().as_secs() < SHORT_STEP_SECS
        && !rollout.steps.is_empty()
    {
        verdict.warn(
            "spec.rollout.stepEvery",
            format!(
                "{every} per step is little time to see who is refused before enforcement grows; consider hours, with pauseAboveDenyRatio"
            ),
        );
    }
    if rollout.pause_above_deny_ratio.is_some() && rollout.steps.is_empty() {
        verdict.warn(
            "spec.rollout.pauseAboveDenyRatio",
            "has no effect without steps: it holds a stepped rollout",
        );
    }
    if let Some(warning) = policy
        .spec
        .legacy_session
        .as_ref()
        .and_then(|legacy| crate::policy::legacy::warning(legacy, reviewed_at))
    {
        verdict.warn("spec.legacySession.until", warning);
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeSet;

    impl SigningKeyIndex for BTreeSet<ObjectKey> {
        fn contains(&self, id: &ObjectKey) -> bool {
            BTreeSet::contains(self, id)
        }
    }

    const T0: Timestamp = Timestamp::constant(1_782_864_000, 0);

    fn key(spec: Value) -> Value {
        json!({"apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
               "metadata": {"name": "web", "namespace": "auth"}, "spec": spec})
    }

    fn policy(spec: Value) -> Value {
        let mut spec = spec;
        spec.as_object_mut()
            .unwrap()
            .entry("issuers")
            .or_insert(json!([{"signingKeyRef": {"name": "web", "namespace": "auth"}}]));
        json!({"apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
               "metadata": {"name": "payments", "namespace": "shop"}, "spec": spec})
    }

    fn web() -> BTreeSet<ObjectKey> {
        [ObjectKey {
            namespace: "auth".into(),
            name: "web".into(),
        }]
        .into()
    }

    fn fields(verdict: &Verdict) -> Vec<&str> {
        verdict.refusals.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn the_defaults_pass_without_warnings() {
        let verdict = review(Kind::SigningKey, &key(json!({})), None, None, &web(), T0);
        assert_eq!(verdict, Verdict::default());
        let verdict = review(
            Kind::AuthPolicy,
            &policy(json!({"audiences": ["payments"]})),
            None,
            None,
            &web(),
            T0,
        );
        assert_eq!(verdict, Verdict::default());
    }

    #[test]
    fn a_field_that_does_not_parse_is_named() {
        let verdict = review(
            Kind::SigningKey,
            &key(json!({"algorithm": "HS256"})),
            None,
            None,
            &web(),
            T0,
        );
        assert_eq!(fields(&verdict), ["spec.algorithm"]);
        assert!(verdict.refusals[0].message.contains("RS256"));
    }

    #[test]
    fn the_request_namespace_fills_a_missing_one() {
        let mut object = key(json!({}));
        object["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("namespace");
        let verdict = review(Kind::SigningKey, &object, None, Some("../x"), &web(), T0);
        assert_eq!(fields(&verdict), ["metadata.namespace"]);
    }

    #[test]
    fn risky_rotation_settings_warn() {
        let verdict = signing_key(
            &from_value(&key(
                json!({"rotation": {"every": "1m", "prePublish": "30s", "retainFor": "30m"}}),
            ))
            .unwrap(),
            None,
            &NoSigningKeys,
        );
        assert!(verdict.allowed());
        let warned: Vec<&str> = verdict
            .warnings
            .iter()
            .map(|w| w.split(':').next().unwrap())
            .collect();
        assert_eq!(
            warned,
            [
                "spec.rotation.retainFor",
                "spec.rotation.prePublish",
                "spec.rotation"
            ]
        );
        assert!(verdict.warnings[2].contains("about 32 keys"));
    }

    #[test]
    fn an_algorithm_change_is_allowed_with_a_warning_and_a_secret_rename_refused() {
        let old = key(json!({"algorithm": "RS256"}));
        let verdict = review(
            Kind::SigningKey,
            &key(json!({"algorithm": "ES256"})),
            Some(&old),
            None,
            &web(),
            T0,
        );
        assert!(verdict.allowed());
        assert!(
            verdict.warnings[0].starts_with("spec.algorithm: changes from RS256/2048 to ES256"),
            "{verdict:?}"
        );
        let verdict = review(
            Kind::SigningKey,
            &key(json!({"secretName": "other"})),
            Some(&old),
            None,
            &web(),
            T0,
        );
        assert_eq!(fields(&verdict), ["spec.secretName"]);
        assert!(verdict.refusals[0].message.contains("Keep \"web-keys\""));
    }

    #[test]
    fn a_missing_signing_key_warns() {
        let verdict = review(
            Kind::AuthPolicy,
            &policy(json!({"audiences": ["a"]})),
            None,
            None,
            &NoSigningKeys,
            T0,
        );
        assert!(verdict.allowed());
        assert_eq!(verdict.warnings.len(), 1);
        assert!(
            verdict.warnings[0]
                .starts_with("spec.issuers[0].signingKeyRef: SigningKey auth/web does not exist")
        );
    }

    /// An index that knows auth/web with a 15-minute limit.
    struct FifteenMinutes;

    impl SigningKeyIndex for FifteenMinutes {
        fn contains(&self, id: &ObjectKey) -> bool {
            web().contains(id)
        }

        fn max_token_lifetime(&self, id: &ObjectKey) -> Option<SignedDuration> {
            self.contains(id).then(|| SignedDuration::from_mins(15))
        }
    }

    #[test]
    fn accepting_tokens_longer_than_the_keys_limit_warns() {
        let warnings = |spec: Value, index: &dyn SigningKeyIndex| {
            review(Kind::AuthPolicy, &policy(spec), None, None, index, T0).warnings
        };
        let raised = json!({"audiences": ["a"], "issuers": [
            {"signingKeyRef": {"name": "web", "namespace": "auth"}, "maxTokenLifetime": "8h"}]});
        let said = warnings(raised.clone(), &FifteenMinutes);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with(
                "spec.issuers[0].maxTokenLifetime: accepts tokens of SigningKey auth/web living up to 8h, longer than its own maxTokenLifetime (15m)"
            ),
            "{}",
            said[0]
        );
        // Not known: compared with the default.
        assert!(warnings(raised, &web())[0].contains("(1h by default)"));
        // Shorter than the key's: nothing to say.
        let lowered = json!({"audiences": ["a"], "issuers": [
            {"signingKeyRef": {"name": "web", "namespace": "auth"}, "maxTokenLifetime": "10m"}]});
        assert!(warnings(lowered, &FifteenMinutes).is_empty());
        // A policy limit longer than the key's does not lengthen it: say so.
        let long = json!({"audiences": ["a"], "maxTokenLifetime": "4h"});
        let said = warnings(long, &FifteenMinutes);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with(
                "spec.maxTokenLifetime: 4h does not lengthen the limit of SigningKey auth/web (15m"
            ),
            "{}",
            said[0]
        );
    }

    #[test]
    fn a_token_review_mapping_without_the_safe_defaults_warns() {
        let warned = |mapping: Value| {
            let spec = json!({"audiences": ["a"], "tokenReview": mapping});
            let verdict = review(Kind::AuthPolicy, &policy(spec), None, None, &web(), T0);
            assert!(verdict.allowed());
            verdict
                .warnings
                .iter()
                .map(|w| w.split(':').next().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert!(warned(json!({})).is_empty());
        assert!(
            warned(json!({"usernamePrefix": "authplane:", "groupsPrefix": "authplane:"}))
                .is_empty()
        );
        assert!(warned(json!({"usernameClaim": "email", "usernamePrefix": "-"})).is_empty());
        for off in ["-", ""] {
            assert_eq!(
                warned(json!({"usernamePrefix": off})),
                ["spec.tokenReview.usernamePrefix"]
            );
        }
        assert_eq!(
            warned(json!({"allowSystemNames": true})),
            ["spec.tokenReview.allowSystemNames"]
        );
        assert_eq!(
            warned(json!({"usernamePrefix": "system:x:"})),
            ["spec.tokenReview.usernamePrefix"]
        );
    }

    #[test]
    fn large_enforcement_steps_warn_and_rollbacks_do_not() {
        let at = |mode: &str, percentage: f64| {
            policy(json!({"audiences": ["a"], "rollout": {"mode": mode, "percentage": percentage}}))
        };
        let step = |old: Option<Value>, new: Value| {
            review(Kind::AuthPolicy, &new, old.as_ref(), None, &web(), T0).warnings
        };
        assert!(step(None, at("Enforce", 100.0))[0].contains("on creation, with no Audit phase"));
        assert!(
            step(Some(at("Disabled", 0.0)), at("Enforce", 60.0))[0].contains("from mode Disabled")
        );
        assert!(
            step(Some(at("Audit", 100.0)), at("Enforce", 100.0))[0].contains("straight from Audit")
        );
        assert!(
            step(Some(at("Enforce", 10.0)), at("Enforce", 100.0))[0]
                .contains("from 10% in one step")
        );
        assert!(step(Some(at("Enforce", 50.0)), at("Enforce", 100.0)).is_empty());
        assert!(step(Some(at("Enforce", 100.0)), at("Enforce", 0.0)).is_empty());
        assert!(step(Some(at("Audit", 100.0)), at("Enforce", 10.0)).is_empty());
    }

    #[test]
    fn a_refresh_floor_below_the_runtime_floor_warns() {
        let with = |min: &str| {
            let external =
                json!({"issuer": "https://login.example/t", "refresh": {"minInterval": min}});
            let verdict = review(
                Kind::AuthPolicy,
                &policy(json!({"audiences": ["a"], "issuers": [external],
                    "rollout": {"mode": "Audit"}})),
                None,
                None,
                &web(),
                T0,
            );
            assert!(verdict.allowed(), "{:?}", verdict.refusals);
            verdict.warnings
        };
        let warnings = with("5s");
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("spec.issuers[0].refresh.minInterval: 5s is below")),
            "{warnings:?}"
        );
        assert!(with("30s").is_empty(), "{:?}", with("30s"));
    }

    #[test]
    fn steps_that_lower_the_share_in_force_warn() {
        let review_edit = |old: Value, new: Value| {
            review(Kind::AuthPolicy, &new, Some(&old), None, &web(), T0).warnings
        };
        let manual = |percentage: f64| {
            policy(
                json!({"audiences": ["a"], "rollout": {"mode": "Enforce", "percentage": percentage}}),
            )
        };
        let stepped = policy(json!({"audiences": ["a"], "rollout": {
            "mode": "Enforce", "steps": [10, 50, 100], "stepEvery": "1h"}}));
        let warnings = review_edit(manual(30.0), stepped.clone());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "spec.rollout.steps: lowers the enforced share from 30% to 10% at once"
            ),
            "{}",
            warnings[0]
        );
        // Steps that keep the share, and explicit rollbacks, say nothing.
        let keeps = policy(json!({"audiences": ["a"], "rollout": {
            "mode": "Enforce", "steps": [30, 50, 100], "stepEvery": "1h"}}));
        assert!(review_edit(manual(30.0), keeps).is_empty());
        assert!(review_edit(manual(30.0), manual(0.0)).is_empty());
        // A stepped rollout at 50% (its status says so) edited to new steps.
        let mut at_fifty = stepped;
        at_fifty["status"] = json!({"effectivePercentage": 50.0, "rollout": {
            "steps": [10, 50, 100], "step": 1, "since": "2026-11-27T10:00:00Z"}});
        let fewer = policy(json!({"audiences": ["a"], "rollout": {
            "mode": "Enforce", "steps": [20, 100], "stepEvery": "1h"}}));
        assert!(review_edit(at_fifty.clone(), fewer)[0].contains("from 50% to 20%"));
        // An unrelated edit of a progression that moved past its recorded step (status
        // says 100 while the record says step 1) warns of nothing.
        let mut moved_on = at_fifty;
        moved_on["status"]["effectivePercentage"] = json!(100.0);
        let mut edited = moved_on.clone();
        edited["spec"]["audiences"] = json!(["a", "b"]);
        edited.as_object_mut().unwrap().remove("status");
        assert!(review_edit(moved_on, edited).is_empty());
    }

    /// auth/web serving `/auth/web` and holding `web-keys`, on a server at
    /// http://127.0.0.1:8080 where namespace `platform` may claim any path.
    struct Served(Claims);

    impl SigningKeyIndex for Served {
        fn contains(&self, id: &ObjectKey) -> bool {
            self.0.snapshot.secrets.values().any(|user| user == id)
        }
        fn claims(&self) -> Option<Claims> {
            Some(self.0.clone())
        }
    }

    fn served() -> Served {
        let web = ObjectKey {
            namespace: "auth".into(),
            name: "web".into(),
        };
        let secret = |name: &str| ObjectKey {
            namespace: "auth".into(),
            name: name.into(),
        };
        let snapshot = Snapshot {
            path_owners: [("/auth/web".to_owned(), Some(web.clone()))]
                .into_iter()
                .collect(),
            secrets: [
                (secret("web-keys"), web.clone()),
                (secret("web-keys-active"), web),
            ]
            .into_iter()
            .collect(),
            ..Snapshot::default()
        };
        let scope = IssuerScope::new("http://127.0.0.1:8080", ["platform".to_owned()]).unwrap();
        Served(Claims {
            scope: Arc::new(scope),
            snapshot: Arc::new(snapshot),
        })
    }

    fn named(namespace: &str, name: &str, spec: Value) -> Value {
        json!({"apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
               "metadata": {"name": name, "namespace": namespace}, "spec": spec})
    }

    #[test]
    fn an_issuer_path_in_service_or_outside_the_namespace_cannot_be_claimed() {
        let index = served();
        let create = |object: Value| review(Kind::SigningKey, &object, None, None, &index, T0);
        let theirs = json!({"issuer": "http://127.0.0.1:8080/auth/web"});
        // Another namespace: outside its own path.
        let verdict = create(named("aaa", "x", theirs.clone()));
        assert_eq!(fields(&verdict), ["spec.issuer"]);
        assert!(
            verdict.refusals[0].message.contains("is outside \"/aaa\""),
            "{verdict:?}"
        );
        // The same namespace, sorting first by name: the path is in service.
        let verdict = create(named("auth", "aaa", theirs.clone()));
        assert_eq!(fields(&verdict), ["spec.issuer"]);
        assert!(
            verdict.refusals[0]
                .message
                .contains("already claimed by SigningKey auth/web"),
            "{verdict:?}"
        );
        // The platform's namespace may claim any path, but not one in service.
        assert!(!create(named("platform", "x", theirs)).allowed());
        assert!(
            create(named(
                "platform",
                "root",
                json!({"issuer": "http://127.0.0.1:8080"})
            ))
            .allowed()
        );
        // The owner itself, edited, is fine; a default issuer in one's own namespace too.
        let web = named("auth", "web", json!({}));
        assert_eq!(
            review(Kind::SigningKey, &web, Some(&web), None, &index, T0),
            Verdict::default()
        );
        assert_eq!(create(named("shop", "web", json!({}))), Verdict::default());
    }

    #[test]
    fn an_issuer_of_another_host_is_allowed_with_a_warning_that_nothing_is_served() {
        let index = served();
        let verdict = review(
            Kind::SigningKey,
            &named(
                "aaa",
                "x",
                json!({"issuer": "https://evil.example/auth/web"}),
            ),
            None,
            None,
            &index,
            T0,
        );
        assert!(verdict.allowed());
        assert!(
            verdict.warnings[0].starts_with(
                "spec.issuer: \"https://evil.example/auth/web\" is not on authplane's URL"
            ) && verdict.warnings[0].contains("no discovery, JWKS or revocation endpoint"),
            "{verdict:?}"
        );
    }

    #[test]
    fn an_existing_conflict_warns_and_a_changed_issuer_is_a_new_claim() {
        let index = served();
        // Created before the rules (or while the webhook was down): edits still pass.
        let loser = named(
            "auth",
            "aaa",
            json!({"issuer": "http://127.0.0.1:8080/auth/web"}),
        );
        let verdict = review(Kind::SigningKey, &loser, Some(&loser), None, &index, T0);
        assert!(verdict.allowed(), "{verdict:?}");
        assert!(
            verdict
                .warnings
                .iter()
                .any(|w| w.contains("already claimed"))
        );
        // Moving onto the path is refused.
        let before = named("auth", "aaa", json!({}));
        let verdict = review(Kind::SigningKey, &loser, Some(&before), None, &index, T0);
        assert_eq!(fields(&verdict), ["spec.issuer"]);
    }

    #[test]
    fn a_secret_of_another_signing_key_cannot_be_named() {
        let index = served();
        for secret in ["web-keys", "web-keys-active"] {
            let verdict = review(
                Kind::SigningKey,
                &named("auth", "x", json!({"secretName": secret})),
                None,
                None,
                &index,
                T0,
            );
            assert_eq!(fields(&verdict), ["spec.secretName"], "{secret}");
            assert!(
                verdict.refusals[0]
                    .message
                    .contains("holds the keys of SigningKey auth/web")
            );
        }
        // In another namespace the name is free.
        let elsewhere = named("shop", "x", json!({"secretName": "web-keys"}));
        assert!(review(Kind::SigningKey, &elsewhere, None, None, &index, T0).allowed());
    }

    fn token_client(namespace: &str, spec: Value) -> Value {
        json!({"apiVersion": "authplane.io/v1alpha1", "kind": "TokenClient",
               "metadata": {"name": "web", "namespace": namespace}, "spec": spec})
    }

    #[test]
    fn a_token_client_with_its_defaults_passes() {
        let client = token_client(
            "auth",
            json!({"signingKeyRef": {"name": "web"}, "audiences": ["payments-api"]}),
        );
        let verdict = review(Kind::TokenClient, &client, None, None, &FifteenMinutes, T0);
        assert_eq!(verdict, Verdict::default());
        let read: TokenClient = read_object(&client).unwrap();
        assert_eq!(read.spec.access_token_lifetime.as_str(), "15m");
        assert_eq!(read.spec.refresh_tokens.absolute_lifetime.as_str(), "168h");
        assert_eq!(read.spec.refresh_tokens.idle_lifetime.as_str(), "24h");
        assert_eq!(read.spec.refresh_tokens.reuse_grace.as_str(), "5s");
        assert_eq!(read.spec.delivery, crate::api::Delivery::Body);
        assert_eq!(read.spec.refresh_tokens.lifetimes().check(), Ok(()));
    }

    #[test]
    fn token_clients_are_refused_by_field() {
        let cases = [
            (json!({"audiences": ["a"]}), "spec.signingKeyRef"),
            (
                json!({"signingKeyRef": {"name": "web"}, "audiences": []}),
                "spec.audiences",
            ),
            (
                json!({"signingKeyRef": {"name": "web"}, "audiences": ["a", "a"]}),
                "spec.audiences",
            ),
            (
                json!({"signingKeyRef": {"name": "web"}, "audiences": ["a\nb"]}),
                "spec.audiences[0]",
            ),
            (
                json!({"signingKeyRef": {"name": "web", "namespace": "shop"}, "audiences": ["a"]}),
                "spec.signingKeyRef.namespace",
            ),
            (
                json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "allowedClaims": ["roles", "sub"]}),
                "spec.allowedClaims",
            ),
            (
                json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "allowedClaims": ["roles", "roles"]}),
                "spec.allowedClaims",
            ),
            (
                json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "accessTokenLifetime": "48h"}),
                "spec.accessTokenLifetime",
            ),
            (
                json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "accessTokenLifetime": "1 day"}),
                "spec.accessTokenLifetime",
            ),
            (
                json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "refreshTokens": {"idleLifetime": "200h"}}),
                "spec.refreshTokens.idleLifetime",
            ),
            (
                json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "refreshTokens": {"reuseGrace": "2m"}}),
                "spec.refreshTokens.reuseGrace",
            ),
            (
                json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "refreshTokens": {"idleLifetime": "1m", "reuseGrace": "60s"}}),
                "spec.refreshTokens.reuseGrace",
            ),
            (
                json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "delivery": "Cookies"}),
                "spec.delivery",
            ),
            (
                json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "serviceAccounts": [{"namespace": "shop"}]}),
                "spec.serviceAccounts[0].name",
            ),
            (
                json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "rateLimit": {"perMinute": 0}}),
                "spec.rateLimit.perMinute",
            ),
            (
                json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "rateLimit": {"perMinute": 600, "burst": 60001}}),
                "spec.rateLimit.burst",
            ),
            (
                json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "rateLimit": {"perMinute": -1}}),
                "spec.rateLimit.perMinute",
            ),
        ];
        for (spec, field) in cases {
            let verdict = review(
                Kind::TokenClient,
                &token_client("auth", spec.clone()),
                None,
                None,
                &FifteenMinutes,
                T0,
            );
            assert_eq!(fields(&verdict), [field], "{spec}: {verdict:?}");
        }
    }

    #[test]
    fn a_token_client_may_not_outlive_its_keys_limit() {
        let client = token_client(
            "auth",
            json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "accessTokenLifetime": "16m"}),
        );
        let verdict = review(Kind::TokenClient, &client, None, None, &FifteenMinutes, T0);
        assert_eq!(fields(&verdict), ["spec.accessTokenLifetime"]);
        assert!(
            verdict.refusals[0].message.contains("maxTokenLifetime 15m"),
            "{verdict:?}"
        );
        // A key that does not exist (yet): a warning, nothing is refused.
        let elsewhere = token_client(
            "shop",
            json!({"signingKeyRef": {"name": "web"}, "audiences": ["a"], "accessTokenLifetime": "16m"}),
        );
        let verdict = review(
            Kind::TokenClient,
            &elsewhere,
            None,
            None,
            &FifteenMinutes,
            T0,
        );
        assert!(verdict.allowed());
        assert!(
            verdict.warnings[0]
                .starts_with("spec.signingKeyRef: SigningKey shop/web does not exist")
        );
    }

    #[test]
    fn revocations_are_refused_by_their_rules_and_warned_about_their_scope() {
        let known: BTreeSet<ObjectKey> = [ObjectKey {
            namespace: "auth".into(),
            name: "web".into(),
        }]
        .into();
        let revocation = |namespace: &str, spec: Value| {
            json!({
                "apiVersion": "authplane.io/v1alpha1", "kind": "Revocation",
                "metadata": {"generateName": "payment-failed-", "namespace": namespace},
                "spec": spec,
            })
        };
        let review = |object: Value| review(Kind::Revocation, &object, None, None, &known, T0);
        // Created from generateName, in the key's namespace: nothing to say.
        let everywhere = review(revocation(
            "auth",
            json!({"signingKeyRef": {"name": "web"}, "subject": "alice"}),
        ));
        assert_eq!(everywhere, Verdict::default());
        let refused = review(revocation(
            "auth",
            json!({"signingKeyRef": {"name": "web"}, "subject": "alice", "tokenId": "j"}),
        ));
        assert!(!refused.allowed());
        assert!(
            refused.refusals[0]
                .message
                .contains("exactly one of tokenId, subject and sessionId"),
            "{refused:?}"
        );
        let scoped = review(revocation(
            "shop",
            json!({"signingKeyRef": {"name": "web", "namespace": "auth"}, "sessionId": "s"}),
        ));
        assert!(scoped.allowed());
        assert_eq!(
            scoped.warnings,
            [
                "metadata.namespace: applies only to the AuthPolicies of namespace shop; create it in auth to revoke the tokens everywhere"
            ]
        );
        let unknown = review(revocation(
            "auth",
            json!({"signingKeyRef": {"name": "gone"}, "tokenId": "j"}),
        ));
        assert!(
            unknown.allowed()
                && unknown.warnings[0]
                    .starts_with("spec.signingKeyRef: SigningKey auth/gone does not exist")
        );
    }

    #[test]
    fn a_legacy_session_ending_within_a_week_or_ended_warns() {
        let with_until = |until: &str| {
            policy(json!({"audiences": ["a"], "rollout": {"mode": "Audit"},
                          "legacySession": {"cookie": "session_id", "until": until}}))
        };
        let warnings = |until: &str| {
            review(Kind::AuthPolicy, &with_until(until), None, None, &web(), T0).warnings
        };
        // T0 is 2026-07-01T00:00:00Z.
        assert_eq!(warnings("2026-07-09T00:00:00Z"), Vec::<String>::new());
        let soon = warnings("2026-07-07T00:00:00Z");
        assert_eq!(soon.len(), 1, "{soon:?}");
        assert!(soon[0].starts_with("spec.legacySession.until: legacy session cookies stop passing at 2026-07-07T00:00:00Z, within 7 days"), "{soon:?}");
        let past = warnings("2026-06-01T00:00:00Z");
        assert!(
            past[0].starts_with("spec.legacySession.until: 2026-06-01T00:00:00Z has passed"),
            "{past:?}"
        );
        // Not a time: refused, naming the field.
        let verdict = review(
            Kind::AuthPolicy,
            &with_until("next week"),
            None,
            None,
            &web(),
            T0,
        );
        assert!(!verdict.allowed());
        assert!(
            verdict
                .refusals
                .iter()
                .any(|e| e.field.starts_with("spec.legacySession")),
            "{verdict:?}"
        );
    }
}
