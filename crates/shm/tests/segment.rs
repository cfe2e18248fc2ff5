//! SharedMemory in one process: two handles on one name, every error case, typed and
//! atomic access, transfer through the codec.
mod common;

use common::{Cleanup, exists};
use mproc_shm::{
    AccessError, CreateError, IndexError, NameError, OpenError, SharedMemory, UnlinkError,
};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

#[test]
fn two_handles_share_bytes() {
    let mut c = Cleanup::default();
    let name = c.name("share");
    let a = SharedMemory::create_named(&name, 4096).unwrap();
    assert_eq!(a.name(), name);
    assert_eq!(a.size(), 4096);
    assert!(a.is_creator());
    assert!(exists(&name));
    let b = SharedMemory::open(&format!("/{name}")).unwrap();
    assert_eq!(b.name(), name);
    assert_eq!(b.size(), 4096);
    assert!(!b.is_creator());
    assert_ne!(a.as_ptr(), b.as_ptr());
    a.write(100, b"shared bytes").unwrap();
    let mut buf = [0u8; 12];
    b.read(100, &mut buf).unwrap();
    assert_eq!(&buf, b"shared bytes");
    b.write_at(7, 0x1122_3344_5566_7788u64).unwrap(); // unaligned is fine
    assert_eq!(a.read_at::<u64>(7).unwrap(), 0x1122_3344_5566_7788);
    a.fill(0, 16, 0xab).unwrap();
    assert_eq!(b.to_vec()[..16], [0xab; 16]);
    assert_eq!(b.to_vec()[16], 0);
    drop(b); // closing an opener leaves the segment
    assert!(exists(&name));
    a.unlink().unwrap();
    assert!(!exists(&name));
    // The mapping stays usable after unlink.
    a.write(0, b"x").unwrap();
}

#[test]
fn generated_names_are_fresh() {
    let mut c = Cleanup::default();
    let a = SharedMemory::create(10).unwrap();
    let b = SharedMemory::create(10).unwrap();
    c.add(a.name());
    c.add(b.name());
    assert_ne!(a.name(), b.name());
    assert_eq!(a.size(), 10);
    a.unlink().unwrap();
    b.unlink().unwrap();
}

#[test]
fn create_errors() {
    let mut c = Cleanup::default();
    let name = c.name("dup");
    let _a = SharedMemory::create_named(&name, 64).unwrap();
    assert!(matches!(
        SharedMemory::create_named(&name, 64),
        Err(CreateError::AlreadyExists { name: n }) if n == name
    ));
    assert!(matches!(
        SharedMemory::create(0),
        Err(CreateError::ZeroSize)
    ));
    assert!(matches!(
        SharedMemory::create_named(&c.name("zero"), 0),
        Err(CreateError::ZeroSize)
    ));
    assert!(matches!(
        SharedMemory::builder().name(c.name("nosize")).create(),
        Err(CreateError::ZeroSize)
    ));
    for (bad, want) in [
        ("", NameError::Empty),
        ("/", NameError::Empty),
        ("a/b", NameError::BadCharacter { ch: '/', at: 1 }),
        ("sp ace", NameError::BadCharacter { ch: ' ', at: 2 }),
        ("nul\0", NameError::BadCharacter { ch: '\0', at: 3 }),
        ("..", NameError::Reserved),
    ] {
        match SharedMemory::create_named(bad, 64) {
            Err(CreateError::InvalidName(e)) => assert_eq!(e, want, "{bad:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
        match SharedMemory::open(bad) {
            Err(OpenError::InvalidName(e)) => assert_eq!(e, want, "{bad:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let long = "x".repeat(256);
    assert!(matches!(
        SharedMemory::create_named(&long, 1),
        Err(CreateError::InvalidName(NameError::TooLong { len: 256 }))
    ));
    // Errors print something useful.
    let e = SharedMemory::create_named("a b", 1).unwrap_err();
    assert!(e.to_string().contains("not allowed"), "{e}");
}

#[test]
fn open_errors() {
    let mut c = Cleanup::default();
    let missing = c.name("missing");
    match SharedMemory::open(&missing) {
        Err(OpenError::NotFound { name }) => assert_eq!(name, missing),
        other => panic!("{other:?}"),
    }
    let name = c.name("sized");
    let a = SharedMemory::create_named(&name, 100).unwrap();
    assert!(SharedMemory::open_sized(&name, 100).is_ok());
    assert!(matches!(
        SharedMemory::open_sized(&name, 200),
        Err(OpenError::SizeMismatch {
            expected: 200,
            actual: 100
        })
    ));
    a.unlink().unwrap();
    assert!(matches!(
        SharedMemory::open(&name),
        Err(OpenError::NotFound { .. })
    ));
    assert!(matches!(a.unlink(), Err(UnlinkError::NotFound { .. })));
    assert!(matches!(
        mproc_shm::unlink("bad/name"),
        Err(UnlinkError::InvalidName(_))
    ));
    // A segment with no size yet (made by another tool) is a typed error, not a crash.
    let empty = c.name("empty");
    std::fs::File::create(format!("/dev/shm/{empty}")).unwrap();
    assert!(matches!(
        SharedMemory::open(&empty),
        Err(OpenError::Empty { .. })
    ));
    mproc_shm::unlink(&empty).unwrap();
}

#[test]
fn out_of_range_and_misaligned() {
    let mut c = Cleanup::default();
    let a = SharedMemory::create_named(&c.name("range"), 64).unwrap();
    let oob = |offset, len| AccessError::OutOfRange {
        offset,
        len,
        size: 64,
    };
    assert_eq!(a.write(60, b"12345"), Err(oob(60, 5)));
    assert_eq!(a.read(64, &mut [0u8; 1]), Err(oob(64, 1)));
    assert_eq!(a.read(usize::MAX, &mut [0u8; 2]), Err(oob(usize::MAX, 2)));
    assert!(a.read(64, &mut []).is_ok());
    assert_eq!(a.read_at::<u64>(57), Err(oob(57, 8)));
    assert_eq!(a.write_at(61, 1u32), Err(oob(61, 4)));
    assert_eq!(a.fill(1, 64, 0), Err(oob(1, 64)));
    assert_eq!(
        a.atomic::<AtomicU32>(2).unwrap_err(),
        AccessError::Misaligned {
            offset: 2,
            align: 4
        }
    );
    assert_eq!(a.atomic::<AtomicU64>(64).unwrap_err(), oob(64, 8));
    assert!(a.atomics::<AtomicU64>(0, 9).is_err());
    assert!(a.view::<u32>(1, 1).is_err());
    assert!(a.view::<u32>(0, 17).is_err());
    let v = a.view::<u32>(0, 16).unwrap();
    assert_eq!(v.get(16), Err(IndexError { index: 16, len: 16 }));
    assert_eq!(v.set(99, 1), Err(IndexError { index: 99, len: 16 }));
    assert!(v.read_into(10, &mut [0; 7]).is_err());
    assert!(v.write_from(usize::MAX, &[1]).is_err());
    a.unlink().unwrap();
}

#[test]
fn atomics_and_views() {
    let mut c = Cleanup::default();
    let name = c.name("atomic");
    let a = SharedMemory::create_named(&name, 4096).unwrap();
    let b = SharedMemory::open(&name).unwrap();
    let x = a.atomic::<AtomicU64>(8).unwrap();
    let y = b.atomic::<AtomicU64>(8).unwrap();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..10_000 {
                    x.fetch_add(1, Ordering::Relaxed);
                    y.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(x.load(Ordering::SeqCst), 40_000);
    let counters = b.atomics::<AtomicU32>(64, 4).unwrap();
    counters[3].store(9, Ordering::Release);
    assert_eq!(a.read_at::<u32>(64 + 12).unwrap(), 9);

    let v = a.view::<f64>(128, 10).unwrap();
    assert_eq!(v.len(), 10);
    v.write_from(0, &[0.5; 10]).unwrap();
    v.set(9, 2.0).unwrap();
    let w = b.view::<f64>(128, 10).unwrap();
    assert_eq!(w.iter().sum::<f64>(), 6.5);
    assert_eq!(w.to_vec()[9], 2.0);
    let mut some = [0.0; 3];
    w.read_into(7, &mut some).unwrap();
    assert_eq!(some, [0.5, 0.5, 2.0]);
    // The unsafe slice: no one writes while it lives (single-threaded here).
    // SAFETY: nothing else touches these bytes during this block.
    let total: f64 = unsafe { w.as_slice() }.iter().sum();
    assert_eq!(total, 6.5);
    // SAFETY: as above, and no other slice of these elements exists.
    unsafe { v.as_mut_slice()[0] = 1.5 };
    assert_eq!(w.get(0).unwrap(), 1.5);
    // SAFETY: nothing writes the segment while this slice lives.
    assert_eq!(unsafe { b.as_slice() }.len(), 4096);
    let all = a.view_all::<u64>();
    assert_eq!(all.len(), 512);
    a.unlink().unwrap();
}

#[test]
fn builder_options() {
    let mut c = Cleanup::default();
    let name = c.name("builder");
    let a = SharedMemory::builder()
        .name(&name)
        .size(1 << 20)
        .populate(true)
        .huge_pages(true)
        .mode(0o600)
        .create()
        .unwrap();
    a.prefault().unwrap();
    a.write(1 << 19, &[1, 2, 3]).unwrap();
    let b = SharedMemory::builder()
        .name(&name)
        .populate(true)
        .open()
        .unwrap();
    assert_eq!(b.read_at::<[u8; 3]>(1 << 19).unwrap(), [1, 2, 3]);
    let d = b.try_clone().unwrap();
    assert!(!d.is_creator());
    assert_eq!(d.read_at::<u8>(1 << 19).unwrap(), 1);
    a.unlink().unwrap();
    // track(false): not registered, so the test must unlink it (Cleanup does, too).
    let untracked = SharedMemory::builder()
        .name(c.name("untracked"))
        .size(8)
        .track(false)
        .create()
        .unwrap();
    assert!(!untracked.is_creator());
    untracked.unlink().unwrap();
}

#[test]
fn crosses_the_codec_as_an_opener() {
    let mut c = Cleanup::default();
    let name = c.name("codec");
    let a = SharedMemory::create_named(&name, 256).unwrap();
    a.write_at(0, 42u32).unwrap();
    let enc = mproc_core::codec::encode(&(7u8, a.try_clone().unwrap())).unwrap();
    assert_eq!(enc.fds.len(), 1);
    let (seven, b): (u8, SharedMemory) = mproc_core::codec::decode(&enc.bytes, enc.fds).unwrap();
    assert_eq!(seven, 7);
    assert_eq!(b.name(), name);
    assert_eq!(b.size(), 256);
    assert!(!b.is_creator());
    assert_eq!(b.read_at::<u32>(0).unwrap(), 42);
    b.write_at(4, 43u32).unwrap();
    assert_eq!(a.read_at::<u32>(4).unwrap(), 43);
    // Even after the name is gone, a transferred handle still reaches the memory (it
    // travels as its fd).
    a.unlink().unwrap();
    let enc = mproc_core::codec::encode(&b).unwrap();
    let d: SharedMemory = mproc_core::codec::decode(&enc.bytes, enc.fds).unwrap();
    assert_eq!(d.read_at::<u32>(4).unwrap(), 43);
}

#[test]
fn prefault_range_checks_bounds() {
    let mut c = Cleanup::default();
    let a = SharedMemory::create_named(&c.name("prefault"), 3 * 4096 + 10).unwrap();
    a.prefault_range(100, 5000).unwrap();
    a.prefault_range(0, a.size()).unwrap();
    a.prefault_range(a.size(), 0).unwrap();
    assert_eq!(
        a.prefault_range(4096, a.size()),
        Err(AccessError::OutOfRange {
            offset: 4096,
            len: a.size(),
            size: a.size()
        })
    );
    a.write(a.size() - 1, &[1]).unwrap();
    a.unlink().unwrap();
}

#[test]
fn start_tracker_is_idempotent() {
    mproc_shm::start_tracker().unwrap();
    mproc_shm::start_tracker().unwrap();
    let mut c = Cleanup::default();
    let a = SharedMemory::create_named(&c.name("early"), 8).unwrap();
    assert!(a.is_creator());
    a.unlink().unwrap();
}
