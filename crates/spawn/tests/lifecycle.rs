//! Process lifecycle (issues #11 and #15): close, interrupt, `&self` inspection, Debug,
//! daemon inheritance, the parent's sentinel, fds and stdio hygiene, the fork server's
//! context and independence, spawn's executable, joining at exit, the fork warning.
//! Each test covers every start method it applies to.
mod support;

use mproc_core::Handle;
use mproc_spawn::{
    Process, ProcessError, StartMethod, current_process, get_context, parent_process,
    set_join_at_exit,
};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};
use support::*;

fn sleeper(ms: u64) -> u64 {
    sleep_ms(ms)
}

fn quick(x: u32) -> u32 {
    x + 1
}

#[test]
fn close_releases_a_finished_process_and_refuses_a_running_one() {
    for m in StartMethod::ALL {
        let mut p = Process::new(sleeper, 30_000).start_method(m);
        p.start().unwrap();
        assert!(matches!(p.close(), Err(ProcessError::StillRunning)), "{m}");
        assert!(p.is_alive(), "{m}: a refused close changes nothing");
        p.kill().unwrap();
        assert!(matches!(p.join(), Err(ProcessError::Signaled(9))), "{m}");
        let pid = p.pid();
        p.close().unwrap();
        p.close().unwrap();
        assert!(matches!(p.join(), Err(ProcessError::Closed)), "{m}");
        assert!(matches!(p.start(), Err(ProcessError::Closed)), "{m}");
        assert!(matches!(p.terminate(), Err(ProcessError::Closed)), "{m}");
        assert!(matches!(p.interrupt(), Err(ProcessError::Closed)), "{m}");
        assert!(p.sentinel().is_none(), "{m}");
        assert!(!p.is_alive(), "{m}");
        assert_eq!(p.exitcode(), Some(-9), "{m}");
        assert_eq!(p.pid(), pid, "{m}");
        assert!(format!("{p:?}").contains("closed"), "{m}: {p:?}");

        // Closed without a join: the status is collected by close itself.
        let mut p = Process::new(quick, 1).start_method(m);
        p.start().unwrap();
        assert!(eventually(Duration::from_secs(10), || !p.is_alive()));
        p.close().unwrap();
        assert_eq!(p.exitcode(), Some(0), "{m}");
        assert!(mproc_spawn::active_children().is_empty(), "{m}");
    }
    // Never started: closing is allowed, starting afterwards is not.
    let mut p = Process::new(quick, 1);
    p.close().unwrap();
    assert!(matches!(p.start(), Err(ProcessError::Closed)));
    assert_eq!(p.pid(), None);
}

#[test]
fn interrupt_sends_sigint_and_a_fork_server_child_does_not_ignore_it() {
    for m in StartMethod::ALL {
        let mut p = Process::new(sleeper, 30_000).start_method(m);
        p.start().unwrap();
        p.interrupt().unwrap();
        assert!(
            matches!(
                p.join_timeout(Duration::from_secs(20)),
                Err(ProcessError::Signaled(2))
            ),
            "{m}"
        );
        assert_eq!(p.exitcode(), Some(-2), "{m}");
        let shown = format!("{p:?}");
        assert!(shown.contains("-2 (SIGINT)"), "{m}: {shown}");
        // Signalling an ended process does nothing.
        p.interrupt().unwrap();
    }
}

#[test]
fn exitcode_and_is_alive_take_shared_references() {
    for m in StartMethod::ALL {
        let mut procs: Vec<Process<u64>> = [10u64, 30_000]
            .into_iter()
            .map(|ms| Process::new(sleeper, ms).start_method(m))
            .collect();
        for p in &mut procs {
            p.start().unwrap();
        }
        let procs = procs;
        assert!(eventually(Duration::from_secs(10), || procs
            .iter()
            .filter(|p| p.is_alive())
            .count()
            == 1));
        assert_eq!(procs[0].exitcode(), Some(0), "{m}");
        assert_eq!(procs[1].exitcode(), None, "{m}");
        procs[1].terminate().unwrap();
        assert!(eventually(Duration::from_secs(10), || procs
            .iter()
            .all(|p| !p.is_alive())));
        assert_eq!(procs[1].exitcode(), Some(-15), "{m}");
        let shown = format!("{:?}", procs[1]);
        assert!(shown.contains("-15 (SIGTERM)"), "{m}: {shown}");
        assert!(shown.contains(&format!("{m:?}")), "{m}: {shown}");
        assert!(shown.contains("stopped"), "{m}: {shown}");
    }
}

#[test]
fn debug_keeps_the_start_method_after_start() {
    for m in StartMethod::ALL {
        let mut p = get_context(m).process(quick, 1);
        let before = format!("{p:?}");
        assert!(before.contains(&format!("{m:?}")) && before.contains("initial"));
        p.start().unwrap();
        assert_eq!(p.join().unwrap(), 2);
        let after = format!("{p:?}");
        assert!(after.contains(&format!("{m:?}")), "{m}: {after}");
        assert!(after.contains("exitcode: Some(0)"), "{m}: {after}");
    }
}

/// (this process is a daemon, its own child defaults to daemon)
fn daemon_report(m: u8) -> (bool, bool) {
    let m = [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::ForkServer,
    ][m as usize];
    let mut g = Process::new(am_i_daemon, ()).start_method(m);
    let default_is_daemon = g.is_daemon();
    g.start().unwrap();
    let seen = g.join().unwrap();
    assert_eq!(seen, default_is_daemon);
    let mut explicit = Process::new(am_i_daemon, ()).start_method(m).daemon(false);
    explicit.start().unwrap();
    assert!(!explicit.join().unwrap(), "an explicit daemon(false) wins");
    (current_process().daemon(), seen)
}

fn am_i_daemon(_: ()) -> bool {
    current_process().daemon()
}

#[test]
fn a_process_created_in_a_daemon_defaults_to_daemon() {
    for (i, m) in StartMethod::ALL.into_iter().enumerate() {
        let mut p = Process::new(daemon_report, i as u8)
            .start_method(m)
            .daemon(true);
        p.start().unwrap();
        assert_eq!(p.join().unwrap(), (true, true), "{m}");
        let mut p = Process::new(daemon_report, i as u8).start_method(m);
        assert!(!p.is_daemon());
        p.start().unwrap();
        assert_eq!(p.join().unwrap(), (false, false), "{m}");
    }
}

/// (parent pid, sentinel present, parent alive, join_timeout saw it end)
fn parent_report(_: ()) -> (i32, bool, bool, bool) {
    let p = parent_process().expect("a child has a parent");
    (
        p.pid(),
        p.sentinel().is_some(),
        p.is_alive(),
        p.join_timeout(Duration::from_millis(50)).unwrap(),
    )
}

/// Starts a grandchild that waits on its parent's sentinel, reports its pid, and
/// returns before the grandchild ends.
fn orphan_maker((wr, m): (Handle<OwnedFd>, u8)) -> i32 {
    let m = [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::ForkServer,
    ][m as usize];
    let mut g = Process::new(wait_for_parent, wr).start_method(m);
    g.start().unwrap();
    let pid = g.pid().unwrap();
    // Long enough for the grandchild to start and report; then this process ends
    // with the handle leaked (not killed by a drop).
    std::thread::sleep(Duration::from_millis(500));
    std::mem::forget(g);
    pid
}

/// Waits on the parent's sentinel and says how long it waited, through the pipe.
/// (The child is killed with its parent; only a sentinel that fires before that, or
/// no report at all, can be seen.)
fn wait_for_parent(wr: Handle<OwnedFd>) -> u32 {
    let parent = parent_process().unwrap();
    let mut w = std::fs::File::from(wr.0);
    writeln!(w, "ready {}", parent.pid()).unwrap();
    let ended = parent.join_timeout(Duration::from_secs(30)).unwrap();
    let _ = writeln!(w, "ended {ended}");
    1
}

#[test]
fn parent_process_has_a_sentinel_for_the_real_parent() {
    let me = std::process::id() as i32;
    for m in StartMethod::ALL {
        let mut p = Process::new(parent_report, ()).start_method(m);
        p.start().unwrap();
        assert_eq!(p.join().unwrap(), (me, true, true, false), "{m}");
    }
    // A child whose parent ended sees the sentinel fire (or dies with the parent
    // first: PDEATHSIG and the lifeline race the sentinel, both are fine); it never
    // waits the whole 30 s.
    for (i, m) in StartMethod::ALL.into_iter().enumerate() {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let mut p = Process::new(orphan_maker, (Handle(w), i as u8)).start_method(m);
        p.start().unwrap();
        let middle = p.pid().unwrap();
        let grandchild = p.join().unwrap();
        drop(p);
        let started = Instant::now();
        let mut text = String::new();
        std::fs::File::from(r).read_to_string(&mut text).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{m}: the grandchild waited on a parent that had ended"
        );
        assert!(
            text.starts_with(&format!("ready {middle}")),
            "{m}: {text:?}"
        );
        assert!(!text.contains("ended false"), "{m}: {text:?}");
        assert!(eventually(Duration::from_secs(5), || {
            !mproc_core::process_alive(grandchild)
        }));
    }
}

fn is_open(fd: i32) -> bool {
    // SAFETY: fcntl(F_GETFD) on a plain number touches nothing.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// (device, inode) of an open fd.
fn file_id(fd: i32) -> Option<(u64, u64)> {
    // SAFETY: fstat writes into a zeroed stat buffer of the right type.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some((st.st_dev, st.st_ino))
    }
}

/// Whether the file `id` (an inheritable pipe of the parent) is open here under any
/// number, and whether the passed handle works.
fn fd_probe((id, passed): ((u64, u64), Handle<OwnedFd>)) -> (bool, bool) {
    let mut f = std::fs::File::from(passed.0);
    let leaked = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .any(|fd| file_id(fd) == Some(id));
    (leaked, f.write_all(b"x").is_ok())
}

#[test]
fn inheritable_fds_reach_no_child_but_passed_handles_do() {
    // Open before and after the fork server starts, without close-on-exec.
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two fds into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let mut warm = Process::new(quick, 0).start_method(StartMethod::ForkServer);
    warm.start().unwrap();
    warm.join().unwrap();
    let mut late = [0i32; 2];
    // SAFETY: as above.
    assert_eq!(unsafe { libc::pipe(late.as_mut_ptr()) }, 0);
    for m in StartMethod::ALL {
        for fd in [fds[1], late[1]] {
            let id = file_id(fd).unwrap();
            let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
            let mut p = Process::new(fd_probe, (id, Handle(w))).start_method(m);
            p.start().unwrap();
            assert_eq!(p.join().unwrap(), (false, true), "{m}: fd {fd}");
            let mut got = Vec::new();
            std::fs::File::from(r).read_to_end(&mut got).unwrap();
            assert_eq!(got, b"x");
        }
    }
    for fd in fds.into_iter().chain(late) {
        // SAFETY: closing fds this test opened.
        unsafe { libc::close(fd) };
    }
}

/// Prints a lot on stdout and stderr, then returns a value that must arrive intact.
fn chatty(n: u32) -> Vec<u32> {
    for i in 0..200 {
        println!("line {i} on stdout, which the parent closed");
        eprintln!("line {i} on stderr");
    }
    let stdio_ok = (0..3).all(is_open);
    assert!(stdio_ok, "0, 1 and 2 are open (on /dev/null) in the child");
    (0..n).collect()
}

#[test]
fn closed_stdio_never_receives_mproc_fds() {
    // Keep copies to restore, then close 0, 1 and 2.
    // SAFETY: dup/close on the standard fds; the copies are restored below.
    let saved: Vec<i32> = (0..3).map(|fd| unsafe { libc::dup(fd) }).collect();
    for fd in 0..3 {
        // SAFETY: as above.
        unsafe { libc::close(fd) };
    }
    let mut results = Vec::new();
    for m in StartMethod::ALL {
        // The fork server, too, starts while stdio is closed.
        mproc_spawn::stop_forkserver();
        let mut p = Process::new(chatty, 1000).start_method(m);
        let started = p.start();
        let joined = started.map(|()| p.join());
        results.push((m, joined, (0..3).any(is_open)));
    }
    for (fd, copy) in saved.into_iter().enumerate() {
        // SAFETY: restores the standard fds from the copies made above.
        unsafe {
            libc::dup2(copy, fd as i32);
            libc::close(copy);
        }
    }
    let want: Vec<u32> = (0..1000).collect();
    for (m, joined, leaked) in results {
        assert!(
            !leaked,
            "{m}: an mproc fd stayed on 0, 1 or 2 in the parent"
        );
        match joined {
            Ok(Ok(v)) => assert_eq!(v, want, "{m}"),
            other => panic!("{m}: {other:?}"),
        }
    }
}

/// (current directory, value of the test variable)
fn context_report(_: ()) -> (String, Option<String>) {
    (
        std::env::current_dir().unwrap().display().to_string(),
        std::env::var("MPROC_TEST_CONTEXT").ok(),
    )
}

#[test]
fn children_see_the_parents_directory_and_environment_at_start() {
    // Start the fork server first: what it had when it started must not matter.
    let mut warm = Process::new(quick, 0).start_method(StartMethod::ForkServer);
    warm.start().unwrap();
    warm.join().unwrap();
    let dir = unique_path("cwd");
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let old = std::env::current_dir().unwrap();
    std::env::set_current_dir(&dir).unwrap();
    // SAFETY: this test's process runs no other thread that reads the environment.
    unsafe { std::env::set_var("MPROC_TEST_CONTEXT", "after-start") };
    let mut seen = Vec::new();
    for m in StartMethod::ALL {
        let mut p = Process::new(context_report, ()).start_method(m);
        p.start().unwrap();
        seen.push((m, p.join()));
    }
    // SAFETY: as above.
    unsafe { std::env::remove_var("MPROC_TEST_CONTEXT") };
    let mut p = Process::new(context_report, ()).start_method(StartMethod::ForkServer);
    p.start().unwrap();
    let unset = p.join().unwrap();
    std::env::set_current_dir(old).unwrap();
    let _ = std::fs::remove_dir(&dir);
    for (m, got) in seen {
        let (cwd, var) = got.unwrap();
        assert_eq!(cwd, dir.display().to_string(), "{m}");
        assert_eq!(var.as_deref(), Some("after-start"), "{m}");
    }
    assert_eq!(
        unset.1, None,
        "a removed variable is removed in the child too"
    );
}

fn server_of_me(_: ()) -> i32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get())
}

#[test]
fn fork_server_children_outlive_the_server_and_it_ignores_sigint() {
    let run = || {
        let mut p = Process::new(server_of_me, ()).start_method(StartMethod::ForkServer);
        p.start().unwrap();
        p.join().unwrap()
    };
    let server = run();
    assert_ne!(server, std::process::id() as i32);
    let server_pid = rustix::process::Pid::from_raw(server).unwrap();
    // Ctrl-C in a terminal reaches the server too: it must shrug it off.
    rustix::process::kill_process(server_pid, rustix::process::Signal::INT).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(run(), server, "the server survived SIGINT");

    let mut long = Process::new(sleeper, 700).start_method(StartMethod::ForkServer);
    long.start().unwrap();
    let mut panics = Process::new(panicky, ()).start_method(StartMethod::ForkServer);
    panics.start().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    rustix::process::kill_process(server_pid, rustix::process::Signal::KILL).unwrap();
    assert_eq!(long.join().unwrap(), 700, "the child outlived its server");
    assert_eq!(long.exitcode(), Some(0));
    assert!(matches!(panics.join(), Err(ProcessError::Panicked(_))));
    assert_eq!(panics.exitcode(), Some(1));
    // A killed child of a dead server still reports as gone.
    let mut p = Process::new(sleeper, 30_000).start_method(StartMethod::ForkServer);
    p.start().unwrap();
    let new_server = {
        let mut q = Process::new(server_of_me, ()).start_method(StartMethod::ForkServer);
        q.start().unwrap();
        q.join().unwrap()
    };
    assert_ne!(new_server, server);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(new_server).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(p.is_alive(), "still running without its server");
    p.kill().unwrap();
    assert!(p.join_timeout(Duration::from_secs(10)).is_err());
    assert!(!p.is_alive());
}

fn panicky(_: ()) -> u8 {
    std::thread::sleep(Duration::from_millis(300));
    panic!("after the server died")
}

#[test]
fn spawn_runs_the_chosen_executable() {
    let copy = unique_path("exe");
    std::fs::copy("/proc/self/exe", &copy).unwrap();
    let mut ctx = get_context(StartMethod::Spawn);
    ctx.set_executable(&copy);
    assert_eq!(ctx.executable(), copy);
    let mut p = ctx.process(quick, 41);
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), 42);

    // Another program: it cannot run the target, and join says how it ended.
    let mut p = Process::new(quick, 1)
        .start_method(StartMethod::Spawn)
        .executable("/bin/false");
    p.start().unwrap();
    assert!(matches!(p.join(), Err(ProcessError::Exited(1))));
    let mut p = Process::new(quick, 1)
        .start_method(StartMethod::Spawn)
        .executable(copy.with_extension("missing"));
    assert!(matches!(p.start(), Err(ProcessError::Start(_))));

    // The global setting applies to processes without their own.
    mproc_spawn::set_executable(&copy);
    assert_eq!(mproc_spawn::get_executable(), copy);
    let mut p = Process::new(quick, 1).start_method(StartMethod::Spawn);
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), 2);
    mproc_spawn::set_executable("/bin/false");
    let mut p = Process::new(quick, 1).start_method(StartMethod::Spawn);
    p.start().unwrap();
    assert!(p.join().is_err());
    mproc_spawn::set_executable("/proc/self/exe");
    let _ = std::fs::remove_file(&copy);
}

/// Writes `path` after `ms`.
fn mark_after((path, ms): (String, u64)) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(&path, b"done").unwrap();
    1
}

/// In a child: starts a non-daemon and a daemon grandchild that write markers later,
/// drops both handles and returns at once.
fn drop_and_return((on, dir, m): (bool, String, u8)) -> u32 {
    let m = [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::ForkServer,
    ][m as usize];
    set_join_at_exit(on);
    let mut a = Process::new(mark_after, (format!("{dir}/plain"), 300)).start_method(m);
    a.start().unwrap();
    let mut d = Process::new(mark_after, (format!("{dir}/daemon"), 300))
        .start_method(m)
        .daemon(true);
    d.start().unwrap();
    drop(a);
    drop(d);
    0
}

#[test]
fn join_at_exit_waits_for_non_daemon_children_only_when_asked() {
    for (i, m) in StartMethod::ALL.into_iter().enumerate() {
        for on in [true, false] {
            let dir = unique_path("exit");
            std::fs::create_dir_all(&dir).unwrap();
            let d = dir.display().to_string();
            let mut p = Process::new(drop_and_return, (on, d, i as u8)).start_method(m);
            p.start().unwrap();
            assert_eq!(p.join().unwrap(), 0);
            std::thread::sleep(Duration::from_millis(500));
            let plain = dir.join("plain").exists();
            let daemon = dir.join("daemon").exists();
            let _ = std::fs::remove_dir_all(&dir);
            assert_eq!(plain, on, "{m}: non-daemon child joined at exit iff asked");
            assert!(!daemon, "{m}: a daemon child is killed at exit");
        }
    }
}

/// The main-program path: `main` returns (here the test harness exits) with a
/// dropped, running non-daemon child.
#[test]
fn join_at_exit_in_the_main_program() {
    if let Ok(marker) = std::env::var("MPROC_TEST_JOIN_AT_EXIT") {
        set_join_at_exit(true);
        let mut p = Process::new(mark_after, (marker, 300));
        p.start().unwrap();
        drop(p);
        return;
    }
    let marker = unique_path("main-exit");
    let started = Instant::now();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "join_at_exit_in_the_main_program",
            "--test-threads=1",
        ])
        .env("MPROC_TEST_JOIN_AT_EXIT", &marker)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        marker.exists(),
        "the program waited for its child before exiting"
    );
    let _ = std::fs::remove_file(&marker);
}

/// In a fresh single-threaded (spawned) process: does a thread of mproc's own make the
/// fork start method warn? Does a thread of the program's?
fn fork_warning_probe(_: ()) -> (bool, bool) {
    // A start from another thread creates mproc's launcher thread, which stays.
    std::thread::spawn(|| {
        let mut p = Process::new(quick, 1).start_method(StartMethod::Spawn);
        p.start().unwrap();
        p.join().unwrap();
    })
    .join()
    .unwrap();
    let mut p = Process::new(quick, 1).start_method(StartMethod::Fork);
    p.start().unwrap();
    p.join().unwrap();
    let after_own = mproc_spawn::testing::fork_warned();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let user = std::thread::spawn(move || rx.recv());
    std::thread::sleep(Duration::from_millis(120));
    let mut p = Process::new(quick, 1).start_method(StartMethod::Fork);
    p.start().unwrap();
    p.join().unwrap();
    let after_user = mproc_spawn::testing::fork_warned();
    drop(tx);
    let _ = user.join();
    (after_own, after_user)
}

#[test]
fn fork_warning_counts_only_the_programs_threads() {
    let mut p = Process::new(fork_warning_probe, ()).start_method(StartMethod::Spawn);
    p.start().unwrap();
    assert_eq!(p.join().unwrap(), (false, true));
}

fn exit_seven(_: ()) -> u8 {
    std::thread::sleep(Duration::from_millis(100));
    7
}

#[test]
fn a_child_reaped_behind_mprocs_back_is_never_signalled_by_pid() {
    // SIGCHLD ignored: the kernel reaps children itself; mproc's pidfd still names the
    // right process, join still returns the result, and signalling afterwards is a
    // no-op (no pid-based kill of whoever reuses the number).
    // SAFETY: installing SIG_IGN runs no code.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    for m in StartMethod::ALL {
        let mut p = Process::new(exit_seven, ()).start_method(m);
        p.start().unwrap();
        assert_eq!(p.join().unwrap(), 7, "{m}");
        p.kill().unwrap();
        p.terminate().unwrap();
    }
    // SAFETY: as above.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
}
