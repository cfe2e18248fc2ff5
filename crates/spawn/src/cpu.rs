//! How many CPUs there are, and how many this process may use.
use std::path::Path;

/// Number of CPUs online in the system (Python's `os.cpu_count()` /
/// `multiprocessing.cpu_count()`). At least 1.
///
/// ```
/// assert!(mproc_spawn::cpu_count() >= mproc_spawn::usable_cpu_count());
/// ```
pub fn cpu_count() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()))
        .or_else(affinity_count)
        .unwrap_or(1)
        .max(1)
}

/// Number of CPUs this process can actually keep busy: the CPUs of its affinity mask
/// (Python 3.13's `os.process_cpu_count()`), further limited by a cgroup v2 CPU quota
/// (`cpu.max` of its cgroup and every ancestor, rounded up). At least 1. This is the
/// default size of a pool.
pub fn usable_cpu_count() -> usize {
    let mut n = affinity_count().unwrap_or_else(cpu_count);
    if let Some(q) = cgroup_quota() {
        n = n.min(q);
    }
    n.max(1)
}

/// CPUs in this process's affinity mask.
fn affinity_count() -> Option<usize> {
    rustix::thread::sched_getaffinity(None)
        .ok()
        .map(|set| set.count() as usize)
}

/// Parses a kernel CPU list such as `0-3,6,8-9`.
fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                n += b.checked_sub(a)? + 1;
            }
            None => {
                part.parse::<usize>().ok()?;
                n += 1;
            }
        }
    }
    (n > 0).then_some(n)
}

/// The tightest cgroup CPU quota on the path from this process's cgroup to the root, in
/// whole CPUs (rounded up); `None` without a quota. cgroup v2 (`cpu.max`); on a v1 or
/// hybrid system, the v1 `cpu` controller's `cpu.cfs_quota_us` / `cpu.cfs_period_us`.
fn cgroup_quota() -> Option<usize> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let v2 = cgroup_v2_quota(&cg);
    let v1 = cgroup_v1_quota(&cg);
    match (v1, v2) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn cgroup_v1_quota(cg: &str) -> Option<usize> {
    let rel = cg.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        ctrls.split(',').any(|c| c == "cpu").then_some(path)
    })?;
    let root = Path::new("/sys/fs/cgroup/cpu");
    let mut dir = root.join(rel.trim().trim_start_matches('/'));
    let mut best: Option<usize> = None;
    loop {
        let read = |f: &str| -> Option<i64> {
            std::fs::read_to_string(dir.join(f))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        if let (Some(q @ 1..), Some(p @ 1..)) =
            (read("cpu.cfs_quota_us"), read("cpu.cfs_period_us"))
        {
            let n = ((q as u64).div_ceil(p as u64) as usize).max(1);
            best = Some(best.map_or(n, |b| b.min(n)));
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            break;
        }
    }
    best
}

fn cgroup_v2_quota(cg: &str) -> Option<usize> {
    let rel = cg.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let root = Path::new("/sys/fs/cgroup");
    let mut dir = root.join(rel.trim_start_matches('/'));
    let mut best: Option<usize> = None;
    loop {
        if let Some(q) = std::fs::read_to_string(dir.join("cpu.max"))
            .ok()
            .and_then(|s| parse_cpu_max(&s))
        {
            best = Some(best.map_or(q, |b| b.min(q)));
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            break;
        }
    }
    best
}

/// `cpu.max` is `"$MAX $PERIOD"` with `$MAX` = `max` for no limit.
fn parse_cpu_max(s: &str) -> Option<usize> {
    let mut it = s.split_ascii_whitespace();
    let quota = it.next()?;
    let period: u64 = it.next()?.parse().ok()?;
    if quota == "max" || period == 0 {
        return None;
    }
    let quota: u64 = quota.parse().ok()?;
    Some((quota.div_ceil(period) as usize).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3"), Some(4));
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn cpu_max() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("150000 100000"), Some(2));
        assert_eq!(parse_cpu_max("50000 100000"), Some(1));
        assert_eq!(parse_cpu_max("garbage"), None);
    }

    #[test]
    fn counts_are_consistent() {
        let all = cpu_count();
        let usable = usable_cpu_count();
        assert!(all >= 1 && usable >= 1);
        assert!(usable <= all.max(affinity_count().unwrap_or(all)));
    }
}
