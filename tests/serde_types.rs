//! serde types travel (feature `serde`): as a Process argument and result, a Pool task
//! and result, a Queue message and a Pipe message, under the start method of
//! `MPROC_START_METHOD`; a corrupt message is a typed error.
use mproc::Serde;
use mproc::channel::{Pipe, Queue};
use mproc::pool::Pool;
use mproc::spawn::Process;
use std::collections::BTreeMap;

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
struct Order {
    id: u64,
    customer: String,
    lines: BTreeMap<String, (u32, f64)>,
    note: Option<String>,
}

fn order(id: u64) -> Order {
    Order {
        id,
        customer: format!("customer {id}"),
        lines: BTreeMap::from([("tea".into(), (2, 3.5)), ("cake".into(), (id as u32, 1.25))]),
        note: id.is_multiple_of(2).then(|| "even".into()),
    }
}

fn total(o: Serde<Order>) -> Serde<(u64, f64)> {
    let t = o.lines.values().map(|(n, p)| f64::from(*n) * p).sum();
    Serde((o.id, t))
}

#[test]
fn a_serde_value_is_a_process_argument_and_result() {
    let mut p = Process::new(total, Serde(order(4)));
    p.start().unwrap();
    let Serde((id, t)) = p.join().unwrap();
    assert_eq!((id, t), (4, 2.0 * 3.5 + 4.0 * 1.25));
}

#[test]
fn serde_values_are_pool_tasks_and_results() {
    let pool = Pool::new(2).unwrap();
    let out = pool.map(total, (0..50).map(|i| Serde(order(i)))).unwrap();
    for (i, Serde((id, t))) in out.into_iter().enumerate() {
        assert_eq!((id, t), (i as u64, 7.0 + i as f64 * 1.25));
    }
}

fn relay(q: (Queue<Serde<Order>>, Queue<Serde<Order>>)) {
    while let Ok(Serde(mut o)) = q.0.get() {
        if o.id == u64::MAX {
            break;
        }
        o.note = Some(format!("seen by {}", std::process::id()));
        q.1.put(Serde(o)).unwrap();
    }
}

#[test]
fn serde_values_travel_through_queues() {
    let (to, from) = (Queue::new().unwrap(), Queue::new().unwrap());
    let mut p = Process::new(relay, (to.clone(), from.clone()));
    p.start().unwrap();
    for i in 0..20 {
        to.put(Serde(order(i))).unwrap();
    }
    for i in 0..20 {
        let Serde(o) = from.get().unwrap();
        assert_eq!((o.id, &o.lines), (i, &order(i).lines));
        assert!(o.note.unwrap().starts_with("seen by "));
    }
    to.put(Serde(Order {
        id: u64::MAX,
        ..order(0)
    }))
    .unwrap();
    p.join().unwrap();
}

fn echo(c: mproc::channel::Connection) {
    let Serde(mut o): Serde<Order> = c.recv().unwrap();
    o.customer.push_str(" (echoed)");
    c.send(&Serde(o)).unwrap();
    // Then a message that is not an Order's encoding.
    c.send(&Serde(vec![1u8, 2, 3])).unwrap();
}

#[test]
fn serde_values_travel_through_pipes_and_bad_ones_are_errors() {
    let (mine, theirs) = Pipe(true).unwrap();
    let mut p = Process::new(echo, theirs);
    p.start().unwrap();
    mine.send(&Serde(order(9))).unwrap();
    let Serde(o): Serde<Order> = mine.recv().unwrap();
    assert_eq!(o.customer, "customer 9 (echoed)");
    assert!(mine.recv::<Serde<Order>>().is_err());
    p.join().unwrap();
}
