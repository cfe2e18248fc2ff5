//! The shared-memory call path of local connections, across processes: values too big
//! for its buffers still travel whole (on the socket), many calls from several
//! processes at once stay in order, a blocking call sleeps instead of spinning, and an
//! idle server burns no CPU.
use mproc_manager::{ListProxy, Manager, QueueProxy};
use mproc_spawn::Process;
use std::time::{Duration, Instant};

fn start<A: mproc_core::Message + Send + 'static, R: mproc_core::Message + 'static>(
    f: fn(A) -> R,
    args: A,
) -> Process<R> {
    let mut p = Process::new(f, args);
    p.start().expect("start child");
    p
}

fn blob(n: usize, salt: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
}

fn child_push_big(l: ListProxy<Vec<u8>>) -> usize {
    l.push(&blob(300_000, 7)).unwrap();
    l.push(&blob(10, 8)).unwrap();
    l.get(0).unwrap().len()
}

#[test]
fn values_bigger_than_the_buffers_travel_whole() {
    let m = Manager::start().unwrap();
    let l = m.list::<Vec<u8>>().unwrap();
    l.push(&blob(200_000, 1)).unwrap();
    let mut p = start(child_push_big, l.clone());
    assert_eq!(p.join().unwrap(), 200_000);
    assert_eq!(l.len().unwrap(), 3);
    assert_eq!(l.get(1).unwrap(), blob(300_000, 7));
    // A reply bigger than the buffer (a snapshot of all three).
    let all = l.to_vec().unwrap();
    assert_eq!(all, [blob(200_000, 1), blob(300_000, 7), blob(10, 8)]);
    // Small calls go on after the big ones.
    assert_eq!(l.get(2).unwrap(), blob(10, 8));
}

fn child_count((l, base): (ListProxy<u64>, u64)) -> u64 {
    for i in 0..2000 {
        l.append(&(base + i)).unwrap();
    }
    l.len().unwrap() as u64
}

#[test]
fn many_fast_calls_from_several_processes() {
    let m = Manager::start().unwrap();
    let l = m.list::<u64>().unwrap();
    let mut ps: Vec<_> = (0..3)
        .map(|k| start(child_count, (l.clone(), k * 1_000_000)))
        .collect();
    for i in 0..2000 {
        l.append(&(9_000_000 + i)).unwrap();
    }
    for p in &mut ps {
        assert!(p.join().unwrap() >= 2000);
    }
    let all = l.to_vec().unwrap();
    assert_eq!(all.len(), 8000);
    // Each writer's items arrive in its order.
    for base in [0u64, 1_000_000, 2_000_000, 9_000_000] {
        let mine: Vec<u64> = all
            .iter()
            .copied()
            .filter(|v| (base..base + 2000).contains(v))
            .collect();
        assert_eq!(mine, (base..base + 2000).collect::<Vec<_>>());
    }
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the buffer we own.
    #[allow(unsafe_code)]
    let ru = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()), 0);
        ru.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time (user + system) of process `pid`, from `/proc`.
fn process_cpu(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime), counted after the name.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn child_put_later((q, delay_ms): (QueueProxy<u32>, u64)) {
    std::thread::sleep(Duration::from_millis(delay_ms));
    q.put(&5).unwrap();
}

#[test]
fn a_blocking_call_sleeps_and_an_idle_server_burns_no_cpu() {
    let m = Manager::start().unwrap();
    let q = m.queue::<u32>(0).unwrap();
    let l = m.list::<u64>().unwrap();
    // Warm both sides up, so that their spin budgets are at their longest.
    for i in 0..5000 {
        l.append(&i).unwrap();
    }
    // A call that blocks in the server for 600 ms: the caller must sleep through it.
    let mut p = start(child_put_later, (q.clone(), 600));
    let cpu = thread_cpu();
    let t = Instant::now();
    assert_eq!(q.get().unwrap(), 5);
    let waited = t.elapsed();
    let spent = thread_cpu() - cpu;
    p.join().unwrap();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(
        spent < waited / 3,
        "the caller burnt {spent:?} of CPU in a {waited:?} wait"
    );
    // An idle server (its connections open, nobody calling) sleeps.
    let pid = m.pid().unwrap();
    for i in 0..5000 {
        l.append(&i).unwrap();
    }
    let before = process_cpu(pid);
    std::thread::sleep(Duration::from_millis(1000));
    let idle = process_cpu(pid) - before;
    assert!(
        idle < Duration::from_millis(300),
        "idle server used {idle:?}"
    );
    assert_eq!(l.len().unwrap(), 10_000);
}

/// Runs `f` in a child made by a bare `fork` (the proxies it uses are the parent's
/// copies, not imported ones); the child's exit status is 0 when `f` returns true.
fn bare_fork(f: impl FnOnce() -> bool) -> i32 {
    // SAFETY: the child runs `f` and leaves with `_exit`; the test binary runs one test
    // per process under nextest.
    #[allow(unsafe_code)]
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(false);
        // SAFETY: leaves the child without running the parent's exit handlers.
        #[allow(unsafe_code)]
        unsafe {
            libc::_exit(if ok { 0 } else { 1 })
        };
    }
    pid
}

/// Reaps `pid` (killing it first if `kill`), returning its wait status.
fn reap(pid: i32, kill: bool) -> i32 {
    let mut status = 0;
    // SAFETY: signals and reaps the child this test made.
    #[allow(unsafe_code)]
    unsafe {
        if kill {
            libc::kill(pid, libc::SIGKILL);
        }
        libc::waitpid(pid, &mut status, 0)
    };
    status
}

/// Kills and reaps the child if the test fails before it does.
struct Reaper(i32, bool);
impl Drop for Reaper {
    fn drop(&mut self) {
        if !self.1 {
            reap(self.0, true);
        }
    }
}

#[test]
fn a_bare_fork_child_keeps_one_session_for_inherited_proxies() {
    let m = Manager::start().unwrap();
    let rl = m.rlock().unwrap();
    let l = m.list::<u32>().unwrap();
    let pid = bare_fork(|| {
        // An RLock belongs to the session and thread that took it: the child's calls
        // must all go through one session of its own (not a new one per call, which
        // the server would see end, releasing the lock).
        rl.acquire().unwrap();
        l.push(&1).unwrap();
        let t = Instant::now();
        while l.len().unwrap() < 2 {
            if t.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        rl.release().is_ok()
    });
    let mut child = Reaper(pid, false);
    let t = Instant::now();
    while l.len().unwrap() < 1 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the child never pushed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The child still holds the lock.
    assert!(!rl.try_acquire().unwrap());
    l.push(&2).unwrap();
    let status = reap(pid, false);
    child.1 = true;
    assert_eq!(status, 0, "the child could not release its own lock");
    assert!(rl.try_acquire().unwrap());
    rl.release().unwrap();
}
