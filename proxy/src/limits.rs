//! The proxy's file-descriptor limit.
//!
//! Every client connection and every replica connection is a descriptor,
//! and the usual soft limit (1024) would cap a proxy at a few hundred busy
//! clients while the hard limit allows far more. So the soft limit is
//! raised to the hard limit at start-up and both are logged: an operator
//! who sees `accept failed` warnings can tell whether the limit is the
//! reason. Past the limit the accept loop backs off (see `server`) and
//! serves the connections it has.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and logs the result;
/// returns the soft limit now in force, if it could be read.
pub fn raise_nofile() -> Option<u64> {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the file-descriptor limit");
            return None;
        }
    };
    if soft >= hard {
        tracing::info!(limit = soft, "file-descriptor limit");
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(limit = hard, was = soft, "raised the file-descriptor limit");
            Some(hard)
        }
        Err(err) => {
            tracing::warn!(limit = soft, hard, error = %err, "cannot raise the file-descriptor limit");
            Some(soft)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let raised = raise_nofile().expect("limit readable");
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!((raised, soft), (hard, hard));
    }
}
