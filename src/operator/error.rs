//! The one error type of both controllers, and its kind: what they branch on and what
//! the `authplane_reconcile_errors_total` metric counts.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("key generation: {0}")]
    Key(#[from] crate::keys::KeyError),
    #[error("not the leader: nothing written")]
    NotLeader,
}

/// What went wrong, for branching and for the `kind` label of
/// `authplane_reconcile_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The API server refused or could not be reached.
    Api,
    /// A write lost an optimistic-concurrency race (HTTP 409): retried at once.
    Conflict,
    KeyGeneration,
    /// This replica does not hold the lease; nothing was written.
    NotLeader,
}

impl ErrorKind {
    /// The metric label; the README documents these values.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Api => "api",
            ErrorKind::Conflict => "conflict",
            ErrorKind::KeyGeneration => "key_generation",
            ErrorKind::NotLeader => "not_leader",
        }
    }

    /// Whether the failure deserves a Warning event on the object: a conflict retries at
    /// once and a follower writes nothing, so neither is news to whoever reads events.
    pub fn is_reported(self) -> bool {
        matches!(self, ErrorKind::Api | ErrorKind::KeyGeneration)
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => ErrorKind::Conflict,
            Error::Kube(_) => ErrorKind::Api,
            Error::Key(_) => ErrorKind::KeyGeneration,
            Error::NotLeader => ErrorKind::NotLeader,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn api_error(code: u16) -> Error {
        let status: kube::core::Status =
            serde_json::from_value(json!({"code": code, "reason": "test"})).unwrap();
        Error::Kube(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn a_409_is_a_conflict_and_other_api_errors_are_api() {
        assert_eq!(api_error(409).kind(), ErrorKind::Conflict);
        assert_eq!(api_error(500).kind(), ErrorKind::Api);
        assert_eq!(api_error(404).kind(), ErrorKind::Api);
        assert_eq!(
            Error::Key(crate::keys::KeyError::RsaBits(1024)).kind(),
            ErrorKind::KeyGeneration
        );
        assert_eq!(Error::NotLeader.kind(), ErrorKind::NotLeader);
    }

    #[test]
    fn metric_labels_are_the_documented_ones() {
        let labels = [
            ErrorKind::Api,
            ErrorKind::Conflict,
            ErrorKind::KeyGeneration,
            ErrorKind::NotLeader,
        ]
        .map(ErrorKind::label);
        assert_eq!(labels, ["api", "conflict", "key_generation", "not_leader"]);
    }

    #[test]
    fn only_api_and_key_generation_failures_make_a_warning_event() {
        assert!(ErrorKind::Api.is_reported());
        assert!(ErrorKind::KeyGeneration.is_reported());
        assert!(!ErrorKind::Conflict.is_reported());
        assert!(!ErrorKind::NotLeader.is_reported());
    }
}
