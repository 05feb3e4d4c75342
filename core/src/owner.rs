//! A default owner label: which machine and process holds a lock.

/// `hostname:pid` of this process, for [`LockOptions::owner`]: what an
/// operator needs to find the holder of a lock.
///
/// The host name comes from the operating system (`gethostname`); if it is
/// not valid UTF-8 it is converted lossily, and an empty one becomes
/// `unknown-host`. Labels longer than [`MAX_OWNER_LEN`] are cut at a
/// character boundary.
///
/// ```
/// let owner = distlock::default_owner();
/// assert!(owner.ends_with(&format!(":{}", std::process::id())));
/// ```
///
/// [`LockOptions::owner`]: crate::LockOptions::owner
/// [`MAX_OWNER_LEN`]: crate::MAX_OWNER_LEN
pub fn default_owner() -> String {
    let host = gethostname::gethostname();
    let host = host.to_string_lossy();
    let host = if host.trim().is_empty() {
        "unknown-host"
    } else {
        host.trim()
    };
    let pid = std::process::id();
    let suffix = format!(":{pid}");
    let mut host = host.to_owned();
    let room = crate::MAX_OWNER_LEN - suffix.len();
    if host.len() > room {
        let mut cut = room;
        while !host.is_char_boundary(cut) {
            cut -= 1;
        }
        host.truncate(cut);
    }
    host + &suffix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_this_host_and_process() {
        let owner = default_owner();
        let (host, pid) = owner.rsplit_once(':').unwrap();
        assert_eq!(pid, std::process::id().to_string());
        assert!(!host.is_empty());
        assert!(owner.len() <= crate::MAX_OWNER_LEN);
        crate::LockOptions::default()
            .with_owner_host_pid()
            .validate()
            .unwrap();
    }
}
