//! `JoinableQueue` with two consumer processes: the parent puts ten tasks and
//! `join()`s until every task is marked `task_done()`; the consumers send their
//! results back on a second queue.
//! expect: ^all 10 tasks done$
//! expect: ^results: \[1, 4, 9, 16, 25, 36, 49, 64, 81, 100\]$
use mproc::channel::{JoinableQueue, Queue};
use mproc::spawn::Process;

fn consumer((tasks, results): (JoinableQueue<u64>, Queue<(u64, u64)>)) -> usize {
    let mut handled = 0;
    // `get` fails with `Closed` once the parent closes the queue and it is drained.
    while let Ok(n) = tasks.get() {
        results.put((n, n * n)).expect("put a result");
        tasks.task_done().expect("task_done");
        handled += 1;
    }
    handled
}

fn main() {
    let tasks: JoinableQueue<u64> = JoinableQueue::new().expect("task queue");
    let results: Queue<(u64, u64)> = Queue::new().expect("result queue");
    let mut consumers: Vec<_> = (0..2)
        .map(|_| Process::new(consumer, (tasks.clone(), results.clone())))
        .collect();
    for c in &mut consumers {
        c.start().expect("start a consumer");
    }
    for n in 1..=10 {
        tasks.put(n).expect("put a task");
    }
    tasks.join(); // every task_done() has been called
    println!("all 10 tasks done");
    tasks.close(); // lets the consumers' get() return
    let handled: usize = consumers.iter_mut().map(|c| c.join().expect("join")).sum();
    assert_eq!(handled, 10);
    let mut squares: Vec<u64> = (0..10)
        .map(|_| results.get().expect("a result").1)
        .collect();
    squares.sort_unstable();
    println!("results: {squares:?}");
}
