//! ShareableList: items of every kind, slot capacity, typed errors, a segment that is
//! not a list, and a child attaching by name or receiving the handle (default start
//! method; `cargo xtask test-all` re-runs it under each).
mod common;

use common::{Cleanup, exists};
use mproc_shm::{Item, ListError, ListOpenError, OpenError, ShareableList, SharedMemory};
use mproc_spawn::Process;
use std::time::Duration;

fn sample() -> Vec<Item> {
    vec![
        Item::Str("howdy".into()),
        Item::Bytes(b"HoWdY".to_vec()),
        Item::Int(-273),
        Item::Float(3.25),
        Item::Int(42),
        Item::Bool(true),
        Item::None,
    ]
}

#[test]
fn items_round_trip_and_slots_keep_their_size() {
    let mut c = Cleanup::default();
    let l = ShareableList::create_named(&c.name("list"), &sample()).unwrap();
    assert_eq!(l.len(), 7);
    assert_eq!(l.to_vec().unwrap(), sample());
    assert_eq!(l.count(&Item::Int(42)), 1);
    assert_eq!(l.index(&Item::None), Some(6));
    assert_eq!(l.index(&Item::Int(7)), None);
    // Any type that fits the slot may replace an item (as in Python).
    l.set(2, Item::Str("12345678".into())).unwrap();
    l.set(6, Item::Float(0.5)).unwrap();
    l.set(0, Item::Int(1)).unwrap();
    assert_eq!(l.get(2).unwrap(), Item::Str("12345678".into()));
    assert_eq!(l.get(6).unwrap(), Item::Float(0.5));
    assert_eq!(l.get(0).unwrap(), Item::Int(1));
    assert_eq!(
        l.set(2, Item::Str("123456789".into())),
        Err(ListError::TooLarge {
            index: 2,
            capacity: 8,
            needed: 9
        })
    );
    assert!(matches!(l.get(7), Err(ListError::Index(_))));
    assert!(matches!(l.set(99, Item::None), Err(ListError::Index(_))));
    let other = ShareableList::open(l.name()).unwrap();
    assert_eq!(other.get(2).unwrap(), Item::Str("12345678".into()));
    let empty = ShareableList::new(&[]).unwrap();
    c.add(empty.name());
    assert!(empty.is_empty());
    empty.unlink().unwrap();
    l.unlink().unwrap();
}

#[test]
fn damaged_or_foreign_segments_are_typed_errors() {
    let mut c = Cleanup::default();
    let l = ShareableList::create_named(&c.name("damaged"), &sample()).unwrap();
    // Scribble over item 0's tag and item 1's length.
    let (off0, off1) = (
        l.shm().read_at::<u64>(16).unwrap() as usize,
        l.shm().read_at::<u64>(32).unwrap() as usize,
    );
    l.shm().write_at(off0, 200u8).unwrap();
    l.shm().write_at(off1 + 8, u64::MAX).unwrap();
    assert_eq!(l.get(0), Err(ListError::Corrupt { index: 0 }));
    assert_eq!(l.get(1), Err(ListError::Corrupt { index: 1 }));
    assert!(l.to_vec().is_err());
    assert_eq!(l.get(2).unwrap(), Item::Int(-273));
    // Invalid UTF-8 in a str slot.
    l.shm().write(off0, &[4]).unwrap();
    l.shm().write_at(off0 + 8, 2u64).unwrap();
    l.shm().write(off0 + 16, &[0xff, 0xfe]).unwrap();
    assert_eq!(l.get(0), Err(ListError::Corrupt { index: 0 }));
    // A table entry pointing outside the segment.
    l.shm().write_at(16, u64::MAX - 3).unwrap();
    assert!(matches!(
        ShareableList::open(l.name()),
        Err(ListOpenError::NotAList)
    ));
    l.unlink().unwrap();

    let plain = SharedMemory::create_named(&c.name("plain"), 64).unwrap();
    assert!(matches!(
        ShareableList::open(plain.name()),
        Err(ListOpenError::NotAList)
    ));
    plain.write_at(0, u64::from_le_bytes(*b"MPRCSL01")).unwrap();
    plain.write_at(8, u64::MAX).unwrap(); // an absurd count
    assert!(matches!(
        ShareableList::open(plain.name()),
        Err(ListOpenError::NotAList)
    ));
    plain.unlink().unwrap();
    assert!(matches!(
        ShareableList::open(&c.name("missing")),
        Err(ListOpenError::Open(OpenError::NotFound { .. }))
    ));
}

fn edit_by_name(name: String) -> i64 {
    let l = ShareableList::open(&name).expect("open the list by name");
    let Item::Int(x) = l.get(4).unwrap() else {
        panic!("item 4 is not an int")
    };
    l.set(4, Item::Int(x + 1)).unwrap();
    l.set(0, Item::Str("child".into())).unwrap();
    x
}

fn edit_handle(l: ShareableList) -> bool {
    l.set(5, Item::Bool(false)).unwrap();
    l.shm().is_creator()
}

#[test]
fn children_edit_the_list_by_name_and_by_handle() {
    let mut c = Cleanup::default();
    let name = c.name("shared_list");
    let l = ShareableList::create_named(&name, &sample()).unwrap();
    let mut p = Process::new(edit_by_name, name.clone());
    p.start().unwrap();
    assert_eq!(p.join_timeout(Duration::from_secs(120)).unwrap(), Some(42));
    assert_eq!(l.get(4).unwrap(), Item::Int(43));
    assert_eq!(l.get(0).unwrap(), Item::Str("child".into()));
    let handle = ShareableList::open(&name).unwrap();
    let mut p = Process::new(edit_handle, handle);
    p.start().unwrap();
    assert_eq!(
        p.join_timeout(Duration::from_secs(120)).unwrap(),
        Some(false)
    );
    assert_eq!(l.get(5).unwrap(), Item::Bool(false));
    assert!(exists(&name), "a child unlinked a list it did not create");
    l.unlink().unwrap();
}
