//! Manager proxies as pool task arguments and results: they cross into the workers,
//! reconnect there, and a proxy a worker returns keeps its object alive in the parent.
use mproc::manager::{DictProxy, ListProxy, Manager};
use mproc::pool::Pool;

fn record((d, i): (DictProxy<u32, u32>, u32)) -> u32 {
    d.insert(&i, &(i * i)).expect("insert from a worker");
    i
}

fn make_list((m_list, n): (ListProxy<ListProxy<u32>>, u32)) -> usize {
    // A nested proxy read in a worker reconnects there too.
    let inner: ListProxy<u32> = m_list.get(0).expect("the template list");
    inner.push(&n).expect("push");
    inner.len().expect("len")
}

#[test]
fn proxies_go_to_pool_tasks() {
    let m = Manager::start().unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    let pool = Pool::new(2).unwrap();
    let args: Vec<_> = (0..8).map(|i| (d.clone(), i)).collect();
    let done = pool.map(record, args).unwrap();
    assert_eq!(done, (0..8).collect::<Vec<_>>());
    let mut items = d.items().unwrap();
    items.sort();
    assert_eq!(items, (0..8).map(|i| (i, i * i)).collect::<Vec<_>>());

    let outer = m.list::<ListProxy<u32>>().unwrap();
    outer.push(&m.list::<u32>().unwrap()).unwrap();
    let lens = pool
        .map(
            make_list,
            (0..4).map(|n| (outer.clone(), n)).collect::<Vec<_>>(),
        )
        .unwrap();
    assert_eq!(lens.iter().max(), Some(&4));
    let mut got = outer.get(0).unwrap().to_vec().unwrap();
    got.sort();
    assert_eq!(got, [0, 1, 2, 3]);
    drop(pool);
    // The workers are gone: only the parent's references remain (d, outer, its list).
    let t = std::time::Instant::now();
    while m.number_of_objects().unwrap() != 3 {
        assert!(
            t.elapsed().as_secs() < 10,
            "{} objects",
            m.number_of_objects().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
