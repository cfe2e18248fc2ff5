//! Quick end-to-end checks of every start method.
use mproc_spawn::{Process, ProcessError, StartMethod};

fn square(x: u64) -> u64 {
    x * x
}

fn boom(_: ()) -> u32 {
    panic!("kaboom {}", 7)
}

fn exit3(_: ()) -> u32 {
    std::process::exit(3)
}

#[test]
fn every_method_runs_a_target() {
    for m in StartMethod::ALL {
        let mut p = Process::new(square, 12u64).start_method(m);
        p.start().unwrap();
        assert_eq!(p.join().unwrap(), 144, "{m}");
        assert_eq!(p.exitcode(), Some(0));
        let mut p = Process::new(boom, ()).start_method(m);
        p.start().unwrap();
        match p.join() {
            Err(ProcessError::Panicked(msg)) => assert_eq!(msg, "kaboom 7"),
            other => panic!("{m}: {other:?}"),
        }
        assert_eq!(p.exitcode(), Some(1));
        let mut p = Process::new(exit3, ()).start_method(m);
        p.start().unwrap();
        assert!(matches!(p.join(), Err(ProcessError::Exited(3))));
        assert_eq!(p.exitcode(), Some(3));
    }
}
