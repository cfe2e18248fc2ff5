//! Pool basics, ported from CPython's `_TestPool` (Lib/test/_test_multiprocessing.py):
//! map order, chunksize variants, apply/apply_async, starmap, imap, callbacks.
use mproc_pool::{Pool, TaskError};
use std::time::Duration;

fn sqr(x: u64) -> u64 {
    x * x
}

fn mul(a: u64, b: u64) -> u64 {
    a * b
}

fn boom(x: u64) -> u64 {
    if x == 3 {
        panic!("boom at {x}");
    }
    x
}

#[test]
fn apply_and_map_in_order() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.apply(sqr, 5).unwrap(), 25);
    let want: Vec<u64> = (0..100).map(|x| x * x).collect();
    assert_eq!(pool.map(sqr, 0..100u64).unwrap(), want);
    for cs in [1, 2, 3, 7, 1000] {
        assert_eq!(
            pool.map_chunked(sqr, 0..100u64, cs).unwrap(),
            want,
            "chunksize {cs}"
        );
    }
    assert_eq!(pool.map(sqr, Vec::<u64>::new()).unwrap(), Vec::<u64>::new());
}

#[test]
fn starmap_pairs() {
    let pool = Pool::new(2).unwrap();
    let r = pool.starmap(mul, (1..10u64).zip(10..19u64)).unwrap();
    assert_eq!(r, vec![10, 22, 36, 52, 70, 90, 112, 136, 162]);
}

#[test]
fn panic_fails_alone() {
    let pool = Pool::new(2).unwrap();
    let e = pool.map(boom, 0..6u64).unwrap_err();
    assert_eq!(e.index, 3);
    assert_eq!(
        e.error,
        TaskError::Panicked {
            message: "boom at 3".into()
        }
    );
    let all = pool.map_results(boom, 0..6u64);
    assert_eq!(all.len(), 6);
    for (i, r) in all.iter().enumerate() {
        if i == 3 {
            assert!(matches!(r, Err(TaskError::Panicked { .. })));
        } else {
            assert_eq!(r.as_ref().unwrap(), &(i as u64));
        }
    }
    // The pool goes on.
    assert_eq!(pool.apply(sqr, 3).unwrap(), 9);
}

#[test]
fn imap_ordered_and_unordered() {
    let pool = Pool::new(2).unwrap();
    let r: Vec<u64> = pool.imap(sqr, 0..50u64).map(Result::unwrap).collect();
    assert_eq!(r, (0..50).map(|x| x * x).collect::<Vec<_>>());
    let mut u: Vec<u64> = pool
        .imap_unordered_chunked(sqr, 0..50u64, 5)
        .map(Result::unwrap)
        .collect();
    u.sort_unstable();
    assert_eq!(u, (0..50).map(|x| x * x).collect::<Vec<_>>());
    // An endless input is consumed only as far as needed.
    let first: Vec<u64> = pool
        .imap(sqr, 0u64..)
        .take(10)
        .map(Result::unwrap)
        .collect();
    assert_eq!(first, (0..10).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn async_results() {
    let pool = Pool::new(2).unwrap();
    let r = pool.apply_async(sqr, 9);
    assert_eq!(r.get_timeout(Duration::from_secs(30)).unwrap(), 81);
    assert!(r.ready());
    assert_eq!(r.successful(), Some(true));
    let m = pool.map_async(sqr, 0..10u64);
    m.wait();
    assert!(m.ready());
    assert_eq!(m.get().unwrap()[9], 81);
}

#[test]
fn panic_inside_a_chunk_fails_only_its_item() {
    let pool = Pool::new(2).unwrap();
    for cs in [2, 4, 6] {
        let all = pool.map_results(boom, 0..12u64);
        assert!(matches!(all[3], Err(TaskError::Panicked { .. })), "cs {cs}");
        let e = pool.map_chunked(boom, 0..12u64, cs).unwrap_err();
        assert_eq!(e.index, 3);
        let r = pool
            .map_async_chunked(sqr, 0..1000u64, Some(cs))
            .get()
            .unwrap();
        assert_eq!(r, (0..1000).map(|x| x * x).collect::<Vec<_>>());
    }
}

#[cfg(feature = "progress")]
#[test]
fn progress_bars_do_not_change_results() {
    let pool = Pool::new(2).unwrap();
    let want: Vec<u64> = (0..300).map(|x| x * x).collect();
    assert_eq!(pool.map_progress(sqr, 0..300u64).unwrap(), want);
    let got: Vec<u64> = pool
        .imap(sqr, 0..300u64)
        .progress(Some(300))
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, want);
}

fn boom_at_5(x: u64) -> u64 {
    if x == 5 {
        panic!("five");
    }
    x
}

#[test]
fn imap_chunked_streams_packed_chunks_and_keeps_failures_per_item() {
    let pool = Pool::new(2).unwrap();
    let r: Vec<Result<u64, TaskError>> = pool.imap_chunked(boom_at_5, 0..40u64, 7).collect();
    for (i, x) in r.iter().enumerate() {
        if i == 5 {
            assert_eq!(
                x,
                &Err(TaskError::Panicked {
                    message: "five".into()
                })
            );
        } else {
            assert_eq!(x, &Ok(i as u64));
        }
    }
    let mut u: Vec<u64> = pool
        .imap_unordered_chunked(sqr, 0..1000u64, 100)
        .map(Result::unwrap)
        .collect();
    u.sort_unstable();
    assert_eq!(u, (0..1000).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn imap_pulls_its_input_lazily() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PULLED: AtomicUsize = AtomicUsize::new(0);
    let pool = Pool::new(2).unwrap();
    let input = (0u64..).inspect(|_| {
        PULLED.fetch_add(1, Ordering::Relaxed);
    });
    let first: Vec<u64> = pool.imap(sqr, input).take(10).map(Result::unwrap).collect();
    assert_eq!(first.len(), 10);
    // A bounded window ahead of what was consumed, not the whole (endless) input.
    let pulled = PULLED.load(Ordering::Relaxed);
    assert!(pulled < 1000, "pulled {pulled}");
}

#[test]
fn edge_cases() {
    // Python's ValueError for Pool(0).
    assert!(matches!(
        Pool::new(0),
        Err(mproc_pool::PoolError::InvalidArgument(_))
    ));
    let pool = Pool::new(2).unwrap();
    // A chunksize larger than the input, and empty inputs everywhere.
    assert_eq!(pool.map_chunked(sqr, 0..3u64, 100).unwrap(), vec![0, 1, 4]);
    assert_eq!(pool.imap(sqr, Vec::<u64>::new()).count(), 0);
    assert_eq!(
        pool.imap_unordered_chunked(sqr, Vec::<u64>::new(), 5)
            .count(),
        0
    );
    assert!(pool.map_async(sqr, Vec::<u64>::new()).ready());
    assert_eq!(
        pool.starmap(mul, Vec::<(u64, u64)>::new()).unwrap(),
        Vec::<u64>::new()
    );
    // Python's default chunksize rule.
    assert_eq!(mproc_pool::default_chunksize(100_000, 2), 12_500);
    assert_eq!(mproc_pool::default_chunksize(24, 2), 3);
    assert_eq!(mproc_pool::default_chunksize(25, 2), 4);
    assert_eq!(mproc_pool::default_chunksize(1, 4), 1);
    // Strings and nested types travel too.
    fn shout(s: String) -> (usize, String) {
        (s.len(), s.to_uppercase())
    }
    let r = pool
        .map_chunked(shout, ["a".to_string(), "bc".into(), "def".into()], 2)
        .unwrap();
    assert_eq!(r[2], (3, "DEF".to_string()));
}

/// An input that announces its length is chunked as it is read; one that announces a
/// wrong length fails the items it did not deliver instead of leaving the map waiting.
#[test]
fn inputs_of_known_length_and_one_that_lies() {
    let pool = Pool::new(2).unwrap();
    let want: Vec<u64> = (0..10_000u64).map(|x| x * x).collect();
    assert_eq!(pool.map(sqr, 0..10_000u64).unwrap(), want);
    assert_eq!(
        pool.map(sqr, (0..10_000u64).filter(|_| true)).unwrap(),
        want
    );

    struct Liar(u64);
    impl Iterator for Liar {
        type Item = u64;
        fn next(&mut self) -> Option<u64> {
            (self.0 < 3).then(|| {
                self.0 += 1;
                self.0
            })
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            (5, Some(5))
        }
    }
    let out = pool.map_results(sqr, Liar(0));
    assert_eq!(out.len(), 5);
    assert_eq!(out[..3], [Ok(1), Ok(4), Ok(9)]);
    assert!(matches!(out[3], Err(TaskError::Codec { .. })), "{out:?}");
    assert!(pool.map(sqr, Liar(0)).is_err());
}
