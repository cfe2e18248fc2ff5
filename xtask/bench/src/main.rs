//! `mproc-bench`: runs every workload for mproc, the raw OS floor and Rust peers, and
//! prints one JSON record per line. `cargo xtask bench` runs it beside CPython's script
//! (`xtask/bench/python/`) and prints the ratios.
//!
//! Usage: `mproc-bench [--quick] [--filter SUBSTRING]`.
#![allow(unreachable_pub, missing_docs)]

#[allow(dead_code)] // used as workload areas are added
mod harness;
mod manager;
mod pipe;
mod pool;
mod queue;
mod shm;
mod spawn;
mod sync;

use harness::{Opts, Record};

/// One area's entry point: runs its workloads, handing each record to `emit`.
type Area = fn(&Opts, &mut dyn FnMut(Record));

fn main() {
    let mut opts = Opts {
        quick: false,
        filter: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--filter" => opts.filter = args.next(),
            other => {
                eprintln!("mproc-bench: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    // Each area module adds itself here: ("spawn", spawn::run), ...
    let areas: &[(&str, Area)] = &[
        ("manager", manager::run),
        ("pipe", pipe::run),
        ("pool", pool::run),
        ("queue", queue::run),
        ("shm", shm::run),
        ("spawn", spawn::run),
        ("sync", sync::run),
    ];
    for (area, run) in areas {
        eprintln!("mproc-bench: {area}");
        run(&opts, &mut |r: Record| println!("{}", r.to_json()));
    }
}
