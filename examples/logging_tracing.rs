//! `tracing` in pool workers: each task runs in a span; its events reach the parent's
//! subscriber with the span path, tagged with the worker's name and pid.
//! expect: INFO mproc::child: \[PoolWorker-\d+ \d+\] task\{n=1\}: squared result=1
//! expect: INFO mproc::child: \[PoolWorker-\d+ \d+\] task\{n=2\}: squared result=4
//! expect: INFO mproc::child: \[PoolWorker-\d+ \d+\] task\{n=3\}: squared result=9
//! expect: ^\[1, 4, 9\]$
use mproc::pool::Pool;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

fn square(n: u64) -> u64 {
    let span = tracing::info_span!("task", n);
    let _in = span.enter();
    let result = n * n;
    tracing::info!(result, "squared");
    result
}

fn main() {
    // The parent's subscriber prints. Fork children inherit it: `parent_only` keeps its
    // printing layer quiet there and `ForwardLayer` forwards instead. Spawned and
    // fork-server children need nothing.
    let print = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .without_time()
        .with_writer(std::io::stdout)
        .with_filter(mproc::logging::parent_only());
    let subscriber = tracing_subscriber::registry()
        .with(print)
        .with(mproc::logging::ForwardLayer);
    tracing::subscriber::set_global_default(subscriber).expect("install the subscriber");
    let forwarding = mproc::logging::forward().expect("start forwarding");

    let pool = Pool::new(1).expect("start the pool");
    let squares = pool.map(square, 1..4u64).expect("map");
    pool.close();
    pool.join();
    drop(pool);
    drop(forwarding);
    println!("{squares:?}");
}
