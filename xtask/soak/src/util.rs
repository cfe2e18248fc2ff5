//! Shared helpers: a small PRNG, safe signalling of our own children, clocks and
//! snapshots of this process's resources.
use mproc_core::Pidfd;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// xorshift64*: reproducible from the seed printed at start-up.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `min + below(spread)` random bytes.
    pub(crate) fn bytes(&mut self, min: usize, spread: u64) -> Vec<u8> {
        let n = min + self.below(spread) as usize;
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// The three start methods, by index (handy inside process arguments).
pub(crate) const METHODS: [(&str, mproc_spawn::StartMethod); 3] = [
    ("fork", mproc_spawn::StartMethod::Fork),
    ("spawn", mproc_spawn::StartMethod::Spawn),
    ("forkserver", mproc_spawn::StartMethod::ForkServer),
];

/// CLOCK_MONOTONIC in nanoseconds: comparable across the processes of one machine.
pub(crate) fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn own_exe() -> &'static Option<PathBuf> {
    static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();
    EXE.get_or_init(|| std::fs::read_link("/proc/self/exe").ok())
}

/// SIGKILLs `pid` only if it runs this very binary (a worker, a child of ours). The
/// pid is pinned with a pidfd before the check, so a reused pid is never signalled.
pub(crate) fn kill_ours(pid: i32) -> bool {
    let Ok(fd) = Pidfd::open(pid) else {
        return false;
    };
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    if exe.is_none() || exe != *own_exe() {
        return false;
    }
    fd.send_signal(9).is_ok()
}

/// Whether `pid` exists and is not a zombie.
pub(crate) fn alive_not_zombie(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => stat_state(&s).is_some_and(|st| st != 'Z' && st != 'X'),
        Err(_) => false,
    }
}

/// (state, ppid) from a `/proc/<pid>/stat` line.
fn stat_state(s: &str) -> Option<char> {
    let rest = &s[s.rfind(')')? + 2..];
    rest.chars().next()
}

fn stat_ppid(s: &str) -> Option<i32> {
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// Pids of processes running this binary (any parent), excluding ourselves.
pub(crate) fn processes_of_this_binary() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        if exe.is_some() && exe == *own_exe() && alive_not_zombie(pid) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// What the parent holds: open fds, threads, zombie children, /dev/shm entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) fds: usize,
    pub(crate) threads: usize,
    pub(crate) zombies: usize,
    pub(crate) shm: Vec<String>,
}

pub(crate) fn snapshot() -> Snapshot {
    let count = |p: &str| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    Snapshot {
        fds: count("/proc/self/fd"),
        threads: count("/proc/self/task"),
        zombies: zombie_children(),
        shm: shm_held(),
    }
}

/// `/dev/shm` entries this process holds open or mapped (other users of the machine
/// create and remove their own entries meanwhile, so the directory itself is no
/// baseline).
fn shm_held() -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
        for e in rd.flatten() {
            if let Ok(t) = std::fs::read_link(e.path()) {
                let t = t.to_string_lossy().into_owned();
                if t.starts_with("/dev/shm/") {
                    v.push(t);
                }
            }
        }
    }
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        for line in maps.lines() {
            if let Some(i) = line.find("/dev/shm/") {
                v.push(line[i..].to_owned());
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

fn zombie_children() -> usize {
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
        })
        .filter(|s| stat_ppid(s) == Some(me) && stat_state(s) == Some('Z'))
        .count()
}

/// Milliseconds with one decimal, for reports.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
