//! Value, Array, RawValue and RawArray in one process: element mapping (bool, char,
//! arrays, user structs), index errors, locking across threads, a pluggable lock,
//! transfer through the codec.
use mproc_core::codec;
use mproc_shm::{
    Acquisition, Array, ArrayError, IndexError, RawArray, RawValue, ShmLock, Value, impl_element,
};
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Particle {
    pos: [f32; 3],
    id: u32,
}
impl_element!(Particle);

#[test]
fn raw_value_kinds() {
    let f = RawValue::new(2.5f64).unwrap();
    assert_eq!(f.get(), 2.5);
    f.set(-1.0);
    assert_eq!(f.clone().get(), -1.0);
    let b = RawValue::new(false).unwrap();
    assert!(!b.get());
    b.set(true);
    assert!(b.get());
    let c = RawValue::new('λ').unwrap();
    assert_eq!(c.get(), 'λ');
    let arr = RawValue::new([1u16, 2, 3]).unwrap();
    assert_eq!(arr.get(), [1, 2, 3]);
    let p = Particle {
        pos: [1.0, 2.0, 3.0],
        id: 7,
    };
    let v = RawValue::new(p).unwrap();
    assert_eq!(v.get(), p);
    assert_eq!(format!("{b:?}"), "RawValue(true)");
    let big = RawValue::new(u128::MAX).unwrap();
    assert_eq!(big.get(), u128::MAX);
}

#[test]
fn non_pod_elements_read_any_bit_pattern() {
    // Another process may write any byte: bool and char still read as valid values.
    let b = RawValue::new(false).unwrap();
    b.region().write_bytes(0, &[0x7f]).unwrap();
    assert!(b.get());
    let c = RawValue::new('a').unwrap();
    c.region().write_bytes(0, &0xD800u32.to_ne_bytes()).unwrap(); // a surrogate
    assert_eq!(c.get(), char::REPLACEMENT_CHARACTER);
    let bools = RawArray::<bool>::zeroed(3).unwrap();
    bools.region().write_bytes(1, &[2]).unwrap();
    assert_eq!(bools.to_vec(), [false, true, false]);
}

#[test]
fn raw_array_access_and_errors() {
    let a = RawArray::<i64>::zeroed(10).unwrap();
    assert_eq!(a.len(), 10);
    assert!(!a.is_empty());
    assert_eq!(a.to_vec(), [0; 10]);
    a.write_from(2, &[5, 6, 7]).unwrap();
    a.set(9, 99).unwrap();
    assert_eq!(a.get(3), Ok(6));
    assert_eq!(a.get(10), Err(IndexError { index: 10, len: 10 }));
    assert_eq!(a.set(11, 0), Err(IndexError { index: 11, len: 10 }));
    assert_eq!(
        a.write_from(8, &[1, 2, 3]),
        Err(IndexError { index: 11, len: 10 })
    );
    assert!(a.read_into(usize::MAX, &mut [0; 2]).is_err());
    let mut out = [0i64; 4];
    a.read_into(1, &mut out).unwrap();
    assert_eq!(out, [0, 5, 6, 7]);
    assert_eq!(a.iter().sum::<i64>(), 5 + 6 + 7 + 99);
    a.fill(1);
    assert_eq!(a.iter().filter(|&x| x == 1).count(), 10);
    let empty = RawArray::<u8>::from_slice(&[]).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.get(0), Err(IndexError { index: 0, len: 0 }));
    assert!(matches!(
        RawArray::<u64>::zeroed(usize::MAX / 4),
        Err(mproc_shm::AllocError::TooLarge { .. })
    ));
    let from = RawArray::from_slice(&[true, false, true]).unwrap();
    assert_eq!(from.to_vec(), [true, false, true]);
    assert_eq!(format!("{from:?}"), "[true, false, true]");
}

#[test]
fn value_lock_guard_read_modify_write_across_threads() {
    let v: Value<f64> = Value::new(0.0).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let v = v.clone();
            s.spawn(move || {
                for _ in 0..2_000 {
                    *v.lock().unwrap() += 1.0;
                }
            });
        }
    });
    assert_eq!(v.get().unwrap(), 8_000.0);
    v.set(-2.0).unwrap();
    assert_eq!(v.raw().get(), -2.0);
    assert!(!v.get_lock().locked());
    {
        let g = v.lock().unwrap();
        assert!(v.get_lock().locked());
        assert_eq!(*g, -2.0);
    }
    assert!(!v.get_lock().locked());
}

#[test]
fn array_locked_access() {
    let a: Array<i32> = Array::from_slice(&(0..10).collect::<Vec<_>>()).unwrap();
    assert_eq!(a.len(), 10);
    assert_eq!(a.get(4).unwrap(), 4);
    a.set(4, 40).unwrap();
    assert!(matches!(
        a.get(10),
        Err(ArrayError::Index(IndexError { index: 10, len: 10 }))
    ));
    assert!(matches!(a.set(10, 0), Err(ArrayError::Index(_))));
    std::thread::scope(|s| {
        for _ in 0..2 {
            let a = a.clone();
            s.spawn(move || {
                for _ in 0..1_000 {
                    let g = a.lock().unwrap();
                    g.update(0, |x| x + 1).unwrap();
                }
            });
        }
    });
    let g = a.lock().unwrap();
    assert_eq!(g.get(0).unwrap(), 2_000);
    assert_eq!(g.len(), 10);
    assert!(g.update(10, |x| x).is_err());
    g.write_from(8, &[80, 90]).unwrap();
    let mut two = [0; 2];
    g.read_into(8, &mut two).unwrap();
    assert_eq!(two, [80, 90]);
    g.map_in_place(|x| x * 2);
    assert_eq!(g.iter().nth(4), Some(80));
    drop(g);
    a.write_from(1, &[7, 8]).unwrap();
    let mut got = [0; 3];
    a.read_into(0, &mut got).unwrap();
    assert_eq!(got[1..], [7, 8]);
    assert!(matches!(
        a.read_into(9, &mut got),
        Err(ArrayError::Index(_))
    ));
    assert!(matches!(
        a.write_from(9, &[1, 2]),
        Err(ArrayError::Index(_))
    ));
    let z: Array<bool> = Array::zeroed(3).unwrap();
    assert_eq!(z.to_vec().unwrap(), [false; 3]);
    z.lock().unwrap().fill(true);
    assert_eq!(z.raw().to_vec(), [true; 3]);
}

#[test]
fn rlock_and_shared_lock_guard_several_values() {
    let lock = mproc_sync::RLock::new().unwrap();
    let a = Value::with_lock(1u32, lock.clone()).unwrap();
    let b = Value::with_lock(2u32, lock.clone()).unwrap();
    let _outer = lock.lock().unwrap();
    // Re-entrant: the same thread may take the shared lock again through a value.
    *a.lock().unwrap() += 10;
    *b.lock().unwrap() += 20;
    assert_eq!((a.get().unwrap(), b.get().unwrap()), (11, 22));
}

/// A user-supplied lock (a spin lock in a memfd): the lock is pluggable.
#[derive(Clone)]
struct SpinLock(std::sync::Arc<mproc_core::Region>);

struct SpinGuard<'a>(&'a AtomicU32);

impl Drop for SpinGuard<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

impl mproc_core::Transfer for SpinLock {
    const KIND: &'static str = "test::SpinLock";
    fn export(
        &self,
        out: &mut mproc_core::transfer::Exporter<'_>,
    ) -> Result<(), mproc_core::TransferError> {
        self.0.export(out)
    }
    fn import(
        input: &mut mproc_core::transfer::Importer<'_>,
    ) -> Result<Self, mproc_core::TransferError> {
        Ok(SpinLock(std::sync::Arc::new(mproc_core::Region::import(
            input,
        )?)))
    }
}

impl ShmLock for SpinLock {
    type Guard<'a> = SpinGuard<'a>;
    fn create() -> std::io::Result<Self> {
        Ok(SpinLock(std::sync::Arc::new(mproc_core::Region::new(64)?)))
    }
    fn acquire(&self) -> Acquisition<SpinGuard<'_>> {
        let w = self.0.atomic_u32(0).unwrap();
        while w
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        Acquisition::Clean(SpinGuard(w))
    }
}

#[test]
fn pluggable_lock() {
    let v: Value<u64, SpinLock> = Value::new(0).unwrap();
    std::thread::scope(|s| {
        for _ in 0..2 {
            let v = v.clone();
            s.spawn(move || {
                for _ in 0..5_000 {
                    *v.lock().unwrap() += 1;
                }
            });
        }
    });
    assert_eq!(v.get().unwrap(), 10_000);
    let enc = codec::encode(&v).unwrap();
    let w: Value<u64, SpinLock> = codec::decode(&enc.bytes, enc.fds).unwrap();
    *w.lock().unwrap() += 1;
    assert_eq!(v.get().unwrap(), 10_001);
}

#[test]
fn values_cross_the_codec() {
    let v: Value<f64> = Value::new(1.0).unwrap();
    let a: Array<i32> = Array::from_slice(&[1, 2, 3]).unwrap();
    let rv = RawValue::new(true).unwrap();
    let ra = RawArray::from_slice(&[1u8, 2]).unwrap();
    let enc = codec::encode(&(v.clone(), a.clone(), rv.clone(), ra.clone())).unwrap();
    type All = (Value<f64>, Array<i32>, RawValue<bool>, RawArray<u8>);
    let (v2, a2, rv2, ra2): All = codec::decode(&enc.bytes, enc.fds).unwrap();
    *v2.lock().unwrap() = 9.0;
    a2.set(0, -1).unwrap();
    rv2.set(false);
    ra2.set(1, 7).unwrap();
    assert_eq!(v.get().unwrap(), 9.0);
    assert_eq!(a.to_vec().unwrap(), [-1, 2, 3]);
    assert!(!rv.get());
    assert_eq!(ra.to_vec(), [1, 7]);
    // The element type is checked on the way in.
    let enc = codec::encode(&rv).unwrap();
    assert!(codec::decode::<RawValue<u64>>(&enc.bytes, enc.fds).is_err());
    let enc = codec::encode(&ra).unwrap();
    assert!(codec::decode::<RawArray<i8>>(&enc.bytes, enc.fds).is_err());
}
