//! What bounds the jobs in flight, and telling the admin when it does: the process's
//! file descriptor limit (raised to its hard limit at start), the job cap the
//! descriptor budget allows beside `[provisioning] max_concurrent_jobs`, and the
//! rate-limited notice ("N hellos waiting: max_concurrent_jobs=… reached") raised
//! when hellos wait for a job slot.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use crate::metrics::Limit;

/// Descriptors one job may hold at once: its connection to the device, and a second
/// while it re-dials (after a 401 or the commit restart) before the first is closed.
pub const FDS_PER_JOB: u64 = 2;

/// Descriptors kept for everything but jobs and hello connections: the store and its
/// journal, the master key, listeners, admin API connections and event streams,
/// plugin libraries and their files, the runtime's own.
pub const FDS_RESERVED: u64 = 256;

/// How often at most the admin is told that a limit holds provisioning back.
pub const NOTICE_EVERY: Duration = Duration::from_secs(60);

/// Raises RLIMIT_NOFILE's soft limit to its hard limit (an unprivileged process may)
/// and returns the soft limit in force; `None` if it cannot be read.
pub fn raise_nofile() -> Option<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!("cannot raise the file descriptor limit from {soft} to {hard}: {e}");
            return Some(soft);
        }
    }
    Some(hard.max(soft))
}

/// The jobs that may run at once: `configured` unless the descriptor budget of
/// `nofile` (after the reserve and `hello_connections`) allows fewer — then that
/// many, and [`Limit::FileDescriptors`] is what holds provisioning back.
pub fn job_cap(configured: usize, nofile: u64, hello_connections: usize) -> (usize, Limit) {
    let spare = nofile.saturating_sub(FDS_RESERVED + hello_connections as u64);
    let budget = usize::try_from(spare / FDS_PER_JOB)
        .unwrap_or(usize::MAX)
        .max(1);
    if budget < configured {
        (budget, Limit::FileDescriptors)
    } else {
        (configured, Limit::MaxConcurrentJobs)
    }
}

/// Tells the admin, at most once per [`NOTICE_EVERY`], that hellos wait for a job
/// slot and which limit is the reason; counts every such hello in the metrics.
#[derive(Debug)]
pub struct LimitNotice {
    limit: Limit,
    cap: usize,
    last: Mutex<Option<Instant>>,
}

impl LimitNotice {
    pub fn new(limit: Limit, cap: usize) -> LimitNotice {
        LimitNotice {
            limit,
            cap,
            last: Mutex::new(None),
        }
    }

    /// A hello found every slot taken, with `waiting` hellos queued: counts it, and
    /// returns the notice to log and raise when one is due.
    pub fn hit(&self, waiting: i64) -> Option<String> {
        crate::metrics::limit_reached(self.limit);
        let mut last = self.last.lock().expect("limit notice lock");
        if last.is_some_and(|at| at.elapsed() < NOTICE_EVERY) {
            return None;
        }
        *last = Some(Instant::now());
        Some(self.message(waiting))
    }

    fn message(&self, waiting: i64) -> String {
        match self.limit {
            Limit::MaxConcurrentJobs => format!(
                "{waiting} hellos waiting: max_concurrent_jobs={} reached; raise it \
                 ([provisioning] max_concurrent_jobs) if memory and descriptors allow",
                self.cap
            ),
            Limit::FileDescriptors => format!(
                "{waiting} hellos waiting: {} jobs at once is all the file descriptor \
                 limit allows; raise the process's RLIMIT_NOFILE (ulimit -n, systemd \
                 LimitNOFILE=) to run more",
                self.cap
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_budget_caps_jobs_only_when_it_is_lower() {
        assert_eq!(
            job_cap(2048, 1_048_576, 1024),
            (2048, Limit::MaxConcurrentJobs)
        );
        // 1024 descriptors: 1024 - 256 - 512 = 256 spare, 2 per job.
        assert_eq!(job_cap(2048, 1024, 512), (128, Limit::FileDescriptors));
        assert_eq!(job_cap(2048, 10, 1024), (1, Limit::FileDescriptors));
    }

    #[test]
    fn the_notice_names_the_limit_and_is_rate_limited() {
        let notice = LimitNotice::new(Limit::MaxConcurrentJobs, 256);
        let first = notice.hit(40).expect("the first hit is told");
        assert!(first.starts_with("40 hellos waiting: max_concurrent_jobs=256 reached"));
        assert_eq!(notice.hit(41), None);
        let fds = LimitNotice::new(Limit::FileDescriptors, 100)
            .hit(7)
            .unwrap();
        assert!(fds.contains("file descriptor limit"), "{fds}");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Lowering the soft limit is always allowed; half the hard one is plenty here.
        setrlimit(Resource::RLIMIT_NOFILE, hard / 2, hard).unwrap();
        let limit = raise_nofile().expect("readable");
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((soft, limit), (hard, hard));
    }
}
