//! `MPROC_START_METHOD=""` means the default start method, silently (issue 13): the test
//! re-runs its own binary with the variable empty and reads what the copy printed.
use std::process::Command;

const ROLE: &str = "MPROC_TEST_START_METHOD_ROLE";

#[test]
fn an_empty_start_method_variable_means_the_default_without_a_warning() {
    if std::env::var_os(ROLE).is_some() {
        let m = mproc_spawn::get_start_method();
        let mut p = mproc_spawn::Process::new(|x: u32| x + 1, 1);
        p.start().unwrap();
        println!("method={m} result={}", p.join().unwrap());
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "an_empty_start_method_variable_means_the_default_without_a_warning",
            "--nocapture",
        ])
        .env(ROLE, "1")
        .env(mproc_spawn::START_METHOD_ENV, "")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("method=forkserver result=2"), "{stdout}");
    assert!(!stderr.contains("mproc:"), "warned: {stderr}");
}
