//! The key lifecycle: `Next -> Active -> Retired -> removed`, planned as a pure function of
//! the stored key set, the spec and the current time.
//!
//! Each key stores two instants, `created` and `activates_at`; its state is derived:
//! the Active key is the one with the latest `activates_at <= now`, every earlier key is
//! Retired (since its successor activated), every later key is Next. So there is exactly
//! one Active key whenever any key has activated, by construction, and a restart or an
//! outage can never produce a gap or a second Active key. A Retired key is removed
//! `retain_for` after it retired.

use jiff::{SignedDuration, Timestamp};

use super::{Algorithm, KeyError, KeyMaterial};

/// What the planner needs from a SigningKey spec, with durations already validated as
/// positive.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyPolicy {
    pub algorithm: Algorithm,
    pub rsa_bits: u32,
    /// A new key becomes Active this often.
    pub every: SignedDuration,
    /// The next key is published this long before it becomes Active.
    pub pre_publish: SignedDuration,
    /// A Retired key stays published this long.
    pub retain_for: SignedDuration,
}

impl KeyPolicy {
    fn matches(&self, key: &KeyMaterial) -> bool {
        key.alg() == self.algorithm && key.rsa_bits().is_none_or(|bits| bits == self.rsa_bits)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyState {
    Next,
    Active,
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "Next",
            KeyState::Active => "Active",
            KeyState::Retired => "Retired",
        }
    }
}

/// One key and its lifecycle instants.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRecord {
    pub material: KeyMaterial,
    pub created: Timestamp,
    pub activates_at: Timestamp,
}

/// A key with its state at some instant, and the instants of its coming transitions.
#[derive(Clone, Debug)]
pub struct KeyView<'a> {
    pub record: &'a KeyRecord,
    pub state: KeyState,
    /// When the key stopped (or will stop) being Active, if its successor is known.
    pub retires_at: Option<Timestamp>,
    /// When the key leaves the JWKS, if it is known.
    pub removed_at: Option<Timestamp>,
}

/// All keys of one SigningKey, ordered by activation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeySet {
    keys: Vec<KeyRecord>,
}

impl KeySet {
    pub fn new(mut keys: Vec<KeyRecord>) -> Self {
        keys.sort_by(|a, b| {
            (a.activates_at, a.created, a.material.kid()).cmp(&(
                b.activates_at,
                b.created,
                b.material.kid(),
            ))
        });
        Self { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn records(&self) -> &[KeyRecord] {
        &self.keys
    }

    pub fn get(&self, kid: &str) -> Option<&KeyRecord> {
        self.keys.iter().find(|k| k.material.kid() == kid)
    }

    fn active_index(&self, now: Timestamp) -> Option<usize> {
        self.keys.iter().rposition(|k| k.activates_at <= now)
    }

    /// The key that signs at `now`.
    pub fn active(&self, now: Timestamp) -> Option<&KeyRecord> {
        self.active_index(now).map(|i| &self.keys[i])
    }

    /// Every key with its state at `now` (all of them are published in the JWKS).
    pub fn view(&self, now: Timestamp, retain_for: SignedDuration) -> Vec<KeyView<'_>> {
        let active = self.active_index(now);
        self.keys
            .iter()
            .enumerate()
            .map(|(i, record)| {
                let state = match active {
                    Some(a) if i == a => KeyState::Active,
                    Some(a) if i < a => KeyState::Retired,
                    _ => KeyState::Next,
                };
                let retires_at = self.keys.get(i + 1).map(|next| next.activates_at);
                KeyView {
                    record,
                    state,
                    retires_at,
                    removed_at: retires_at.map(|t| add(t, retain_for)),
                }
            })
            .collect()
    }
}

/// What people asked for, beyond the schedule (from annotations).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Requests {
    /// A manual rotation: satisfied once a key created at or after it exists.
    pub rotate_at: Option<Timestamp>,
    /// Kids to remove from the key set and the JWKS at once (a leaked key).
    pub revoked: Vec<String>,
}

/// What happened to the key set in one planning step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyEvent {
    Generated {
        kid: String,
        activates_at: Timestamp,
    },
    /// A Retired key left the JWKS after its retention.
    Removed { kid: String },
    /// A Next key that never signed was replaced (manual rotation or a spec change).
    Discarded { kid: String },
    /// Removed at once on request.
    Revoked { kid: String },
    /// A published Next key made Active at once, because the Active key was revoked.
    Promoted { kid: String },
    /// A key started signing on schedule (noticed against the stored Active key).
    Activated { kid: String },
    /// The key that signed before it; it stays published for `retainFor`.
    Retired { kid: String },
}

impl KeyEvent {
    /// The key the event is about.
    pub fn kid(&self) -> &str {
        match self {
            KeyEvent::Generated { kid, .. }
            | KeyEvent::Removed { kid }
            | KeyEvent::Discarded { kid }
            | KeyEvent::Revoked { kid }
            | KeyEvent::Promoted { kid }
            | KeyEvent::Activated { kid }
            | KeyEvent::Retired { kid } => kid,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub keys: KeySet,
    pub events: Vec<KeyEvent>,
    /// When the planner must run again; `None` only if nothing is scheduled at all.
    pub next_wakeup: Option<Timestamp>,
}

impl Plan {
    pub fn changed(&self) -> bool {
        !self.events.is_empty()
    }
}

/// Plans the key set at `now`.
///
/// A manual rotation (`requests.rotate_at`, the `authplane.io/rotate-at` annotation) and
/// a spec change pre-publish the new key for `pre_publish` like scheduled rotations: no
/// rotation breaks a verifier. Revocation (`requests.revoked`) is the deliberate
/// exception: the key leaves at once, and its tokens stop verifying.
///
/// `generate` makes new key material; it is the only impure input.
pub fn plan(
    current: &KeySet,
    policy: &KeyPolicy,
    requests: &Requests,
    now: Timestamp,
    generate: &mut dyn FnMut(Algorithm, u32) -> Result<KeyMaterial, KeyError>,
) -> Result<Plan, KeyError> {
    let rotate_requested_at = requests.rotate_at;
    let mut events = Vec::new();
    let mut keys: Vec<KeyRecord> = current
        .view(now, policy.retain_for)
        .into_iter()
        .filter_map(|view| match view.removed_at {
            Some(removed_at) if view.state == KeyState::Retired && removed_at <= now => {
                events.push(KeyEvent::Removed {
                    kid: view.record.material.kid().to_owned(),
                });
                None
            }
            _ => Some(view.record.clone()),
        })
        .collect();

    let mut new_key = |activates_at: Timestamp, events: &mut Vec<KeyEvent>| {
        let material = generate(policy.algorithm, policy.rsa_bits)?;
        events.push(KeyEvent::Generated {
            kid: material.kid().to_owned(),
            activates_at,
        });
        Ok::<_, KeyError>(KeyRecord {
            material,
            created: now,
            activates_at,
        })
    };

    let active_kid = current.active(now).map(|k| k.material.kid().to_owned());
    let mut revoked_active = false;
    keys.retain(|k| {
        let kid = k.material.kid();
        let revoke = requests.revoked.iter().any(|r| r == kid);
        if revoke {
            revoked_active |= active_kid.as_deref() == Some(kid);
            events.push(KeyEvent::Revoked {
                kid: kid.to_owned(),
            });
        }
        !revoke
    });
    if revoked_active {
        // A replacement must sign now: the next key if one is published (verifiers may
        // know it already) and the spec still asks for it, a new one otherwise.
        // Activating at `now` makes it the latest activated key, so no Retired key can
        // become Active again.
        match keys
            .iter_mut()
            .filter(|k| k.activates_at > now && policy.matches(&k.material))
            .min_by_key(|k| k.activates_at)
        {
            Some(next) => {
                next.activates_at = now;
                events.push(KeyEvent::Promoted {
                    kid: next.material.kid().to_owned(),
                });
            }
            None => {
                let key = new_key(now, &mut events)?;
                keys.push(key);
            }
        }
    }

    // Nothing has ever activated (a new SigningKey): the first key signs at once, there
    // is nobody yet whose cache it could surprise.
    if !keys.iter().any(|k| k.activates_at <= now) {
        let key = new_key(now, &mut events)?;
        keys.push(key);
    }

    // A Next key the spec no longer asks for (its algorithm or size changed since it was
    // made, or the change was reverted) never signed: drop it rather than let it activate.
    // Whatever the spec wants now is then pre-published from now on.
    let manual_pending =
        rotate_requested_at.is_some_and(|t| t <= now && keys.iter().all(|k| k.created < t));
    keys.retain(|k| {
        let discard = k.activates_at > now && (manual_pending || !policy.matches(&k.material));
        if discard {
            events.push(KeyEvent::Discarded {
                kid: k.material.kid().to_owned(),
            });
        }
        !discard
    });

    let set = KeySet::new(keys);
    let Some(active) = set.active(now).cloned() else {
        unreachable!("a key with activates_at <= now was ensured above")
    };
    // Every remaining upcoming key matches the spec.
    let upcoming = set.records().iter().any(|k| k.activates_at > now);
    let spec_pending = !policy.matches(&active.material) && !upcoming;

    let mut keys = set.records().to_vec();
    if manual_pending || spec_pending {
        let key = new_key(add(now, policy.pre_publish), &mut events)?;
        keys.push(key);
    } else if !upcoming {
        let due = add(active.activates_at, policy.every);
        if add(now, policy.pre_publish) >= due {
            let key = new_key(due.max(add(now, policy.pre_publish)), &mut events)?;
            keys.push(key);
        }
    }

    let keys = KeySet::new(keys);
    let next_wakeup = next_wakeup(&keys, policy, rotate_requested_at, now);
    Ok(Plan {
        keys,
        events,
        next_wakeup,
    })
}

/// The earliest future instant at which `plan` would do something.
fn next_wakeup(
    keys: &KeySet,
    policy: &KeyPolicy,
    rotate_requested_at: Option<Timestamp>,
    now: Timestamp,
) -> Option<Timestamp> {
    let views = keys.view(now, policy.retain_for);
    let mut candidates: Vec<Timestamp> = Vec::new();
    for view in &views {
        match view.state {
            // Activation changes which key signs (and what a mounted Secret must carry).
            KeyState::Next => candidates.push(view.record.activates_at),
            KeyState::Retired => candidates.extend(view.removed_at),
            KeyState::Active => {}
        }
    }
    if !views.iter().any(|v| v.state == KeyState::Next)
        && let Some(active) = keys.active(now)
    {
        candidates.push(sub(
            add(active.activates_at, policy.every),
            policy.pre_publish,
        ));
    }
    candidates.extend(rotate_requested_at);
    candidates.into_iter().filter(|t| *t > now).min()
}

/// Saturating arithmetic: a huge duration means "never", not an overflow.
pub fn add(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(if d.is_negative() {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

fn sub(t: Timestamp, d: SignedDuration) -> Timestamp {
    add(t, -d)
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
