//! Admission review of SigningKeys and AuthPolicies, as pure functions: the object (and,
//! on UPDATE, the object it replaces) in, refusals and warnings out.
//!
//! Refusals are exactly what [`Validate`] finds, the one implementation dev mode also
//! applies (it includes the CRD's CEL rules), plus the few rules that need the previous
//! object. Everything else that is risky but legal is a warning: the webhook must never
//! stand between a platform team and a rollback.

use jiff::SignedDuration;
use serde_json::Value;

use crate::policy::progression::Schedule;

use crate::api::{
    AuthPolicy, FieldError, Mode, ObjectKey, Revocation, SigningKey, Validate, from_value,
    read_object,
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
}

impl Kind {
    pub fn from_name(kind: &str) -> Option<Self> {
        match kind {
            "SigningKey" => Some(Kind::SigningKey),
            "AuthPolicy" => Some(Kind::AuthPolicy),
            "Revocation" => Some(Kind::Revocation),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SigningKey => "SigningKey",
            Kind::AuthPolicy => "AuthPolicy",
            Kind::Revocation => "Revocation",
        }
    }
}

/// Which SigningKeys exist: the operator's watch cache in `run`, the manifests in `dev`.
pub trait SigningKeyIndex: Send + Sync {
    fn contains(&self, id: &ObjectKey) -> bool;
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

/// Reviews `object` (CREATE) or the change from `old` to `object` (UPDATE). `namespace`
/// is the request's namespace, used when the object does not carry one.
pub fn review(
    kind: Kind,
    object: &Value,
    old: Option<&Value>,
    namespace: Option<&str>,
    index: &dyn SigningKeyIndex,
) -> Verdict {
    let object = with_namespace(object, namespace);
    match kind {
        Kind::SigningKey => match read_object::<SigningKey>(&object) {
            Ok(key) => signing_key(&key, old.and_then(|o| previous(o, namespace)).as_ref()),
            Err(refused) => Verdict::refused(refused),
        },
        Kind::AuthPolicy => match read_object::<AuthPolicy>(&object) {
            Ok(policy) => auth_policy(
                &policy,
                old.and_then(|o| previous(o, namespace)).as_ref(),
                index,
            ),
            Err(refused) => Verdict::refused(refused),
        },
        Kind::Revocation => match read_object::<Revocation>(&object) {
            Ok(revocation) => self::revocation(&revocation, index),
            Err(refused) => Verdict::refused(refused),
        },
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
                "applies only to the AuthPolicies of namespace {namespace}, and lasts a day unless expiresAt is set (an external issuer's token lifetime is not known)"
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
/// and warnings.
pub fn signing_key(key: &SigningKey, old: Option<&SigningKey>) -> Verdict {
    let refusals = key.validate();
    if !refusals.is_empty() {
        return Verdict::refused(refusals);
    }
    let mut verdict = Verdict::default();
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

/// A step shorter than this shows too little traffic to judge before the next.
const SHORT_STEP_SECS: i64 = 10 * 60;

/// AuthPolicy: [`Validate`], then warnings: a SigningKey that does not exist, an unchecked
/// audience, and enforcement raised by a large step.
pub fn auth_policy(
    policy: &AuthPolicy,
    old: Option<&AuthPolicy>,
    index: &dyn SigningKeyIndex,
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
        let verdict = review(Kind::SigningKey, &key(json!({})), None, None, &web());
        assert_eq!(verdict, Verdict::default());
        let verdict = review(
            Kind::AuthPolicy,
            &policy(json!({"audiences": ["payments"]})),
            None,
            None,
            &web(),
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
        let verdict = review(Kind::SigningKey, &object, None, Some("../x"), &web());
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
        );
        assert!(verdict.allowed());
        assert_eq!(verdict.warnings.len(), 1);
        assert!(
            verdict.warnings[0]
                .starts_with("spec.issuers[0].signingKeyRef: SigningKey auth/web does not exist")
        );
    }

    #[test]
    fn large_enforcement_steps_warn_and_rollbacks_do_not() {
        let at = |mode: &str, percentage: f64| {
            policy(json!({"audiences": ["a"], "rollout": {"mode": mode, "percentage": percentage}}))
        };
        let step = |old: Option<Value>, new: Value| {
            review(Kind::AuthPolicy, &new, old.as_ref(), None, &web()).warnings
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
            review(Kind::AuthPolicy, &new, Some(&old), None, &web()).warnings
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
        let review = |object: Value| review(Kind::Revocation, &object, None, None, &known);
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
}
