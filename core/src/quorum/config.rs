//! Building a quorum: members, settings, and what is refused.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::LockBackend;
use crate::error::LockError;

/// Default [`QuorumConfig::member_timeout`]: 1 s.
///
/// A healthy backend answers in well under a millisecond on a LAN, but a
/// client's first call also connects (TCP, TLS, `HELLO`, script loading),
/// which on a loaded machine with many new clients took several hundred
/// milliseconds in our tests; 1 s never counts a live member as failed.
/// The bound rarely costs anything when a member hangs: a call ends as
/// soon as the other members decide it (a majority agreed, or a majority
/// is out of reach), so a hung member only delays calls whose outcome
/// depends on it. Safety does not depend on it either: acquire checks the
/// remaining validity after the fact, and the guard bounds every renewal by
/// its deadline.
pub const DEFAULT_MEMBER_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of a [`Quorum`](crate::Quorum).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuorumConfig {
    /// The longest the quorum waits for one member's answer before counting
    /// that member as failed for this call (every operation). Members
    /// answer concurrently, so a call ends once its outcome is decided (a
    /// majority agreed, or a majority can no longer be reached), and never
    /// later than this bound. Default [`DEFAULT_MEMBER_TIMEOUT`]; must be
    /// above zero and at most [`MAX_TTL`](crate::MAX_TTL) (24 h: a longer
    /// wait could never leave a lease any validity).
    pub member_timeout: Duration,
    /// Refuse to build a quorum without fencing tokens (when a member lacks
    /// [`Capabilities::fencing`](crate::Capabilities) or, with more than
    /// one member, [`Capabilities::raise_fence`](crate::Capabilities)).
    /// Default `false`: such a quorum is built and reports
    /// `fencing: false` in its capabilities, and its fencing tokens are 0.
    pub require_fencing: bool,
}

impl Default for QuorumConfig {
    fn default() -> Self {
        Self {
            member_timeout: DEFAULT_MEMBER_TIMEOUT,
            require_fencing: false,
        }
    }
}

impl QuorumConfig {
    /// Sets [`member_timeout`](QuorumConfig::member_timeout).
    pub fn with_member_timeout(mut self, timeout: Duration) -> Self {
        self.member_timeout = timeout;
        self
    }

    /// Sets [`require_fencing`](QuorumConfig::require_fencing).
    pub fn with_require_fencing(mut self, on: bool) -> Self {
        self.require_fencing = on;
        self
    }
}

/// Why a [`Quorum`](crate::Quorum) could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuorumError {
    /// The member list was empty.
    #[error("a quorum needs at least one member")]
    NoMembers,
    /// Two members are the same backend (the same instance, or the same
    /// server by [`LockBackend::identity`]): one failure would take out two
    /// votes, and one server would count twice towards the majority.
    #[error("quorum members {first} and {second} are the same backend ({why})")]
    DuplicateMember {
        /// The position of the first of the two in the member list.
        first: usize,
        /// The position of the second.
        second: usize,
        /// What they share: the same instance, or the identity both report.
        why: String,
    },
    /// [`QuorumConfig::require_fencing`] was set and these members (by
    /// position) cannot take part in quorum fencing.
    #[error("fencing was required but members {members:?} lack fencing or raise_fence")]
    NoFencing {
        /// The positions of the members that lack it.
        members: Vec<usize>,
    },
    /// A setting is unusable.
    #[error("invalid quorum settings: {0}")]
    InvalidConfig(String),
}

impl From<QuorumError> for LockError {
    fn from(e: QuorumError) -> Self {
        LockError::InvalidOptions(e.to_string())
    }
}

/// Anything that can be a member of a [`Quorum`](crate::Quorum): any
/// backend by value, an `Arc` of one, or an `Arc<dyn LockBackend>` (to mix
/// backend types in one list).
pub trait QuorumMember {
    /// The member as a shared trait object.
    fn into_member(self) -> Arc<dyn LockBackend>;
}

impl<B: LockBackend> QuorumMember for B {
    fn into_member(self) -> Arc<dyn LockBackend> {
        // An `Arc<dyn LockBackend>` is kept as it is (so the same shared
        // instance listed twice is recognised); any other backend, an
        // `Arc<B>` included (it forwards every method), is shared as is.
        let any: &dyn std::any::Any = &self;
        if let Some(shared) = any.downcast_ref::<Arc<dyn LockBackend>>() {
            return shared.clone();
        }
        Arc::new(self)
    }
}

/// Checks the member list and the settings.
pub(super) fn validate(
    members: &[Arc<dyn LockBackend>],
    config: &QuorumConfig,
) -> Result<(), QuorumError> {
    if members.is_empty() {
        return Err(QuorumError::NoMembers);
    }
    if config.member_timeout.is_zero() {
        return Err(QuorumError::InvalidConfig(
            "member_timeout must be above zero".into(),
        ));
    }
    if config.member_timeout > crate::MAX_TTL {
        return Err(QuorumError::InvalidConfig(format!(
            "member_timeout {:?} is above the longest TTL ({:?}): no lease could outlast it",
            config.member_timeout,
            crate::MAX_TTL
        )));
    }
    let identities: Vec<Option<String>> = members.iter().map(|m| m.identity()).collect();
    for second in 1..members.len() {
        for first in 0..second {
            let same_instance =
                std::ptr::addr_eq(Arc::as_ptr(&members[first]), Arc::as_ptr(&members[second]));
            let why = if same_instance {
                Some("the same instance".to_owned())
            } else {
                match (&identities[first], &identities[second]) {
                    (Some(a), Some(b)) if a == b => Some(format!("both are {a}")),
                    _ => None,
                }
            };
            if let Some(why) = why {
                return Err(QuorumError::DuplicateMember { first, second, why });
            }
        }
    }
    if config.require_fencing {
        let lacking: Vec<usize> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                let caps = m.capabilities();
                !caps.fencing || (members.len() > 1 && !caps.raise_fence)
            })
            .map(|(i, _)| i)
            .collect();
        if !lacking.is_empty() {
            return Err(QuorumError::NoFencing { members: lacking });
        }
    }
    Ok(())
}
