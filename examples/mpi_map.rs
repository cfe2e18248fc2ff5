//! Python's first Pool example on MPI ranks, as mpi4py.futures runs it:
//! `mpirun -n 3 cargo run --example mpi_map --features mpi`. Rank 0 maps; ranks 1 and
//! 2 are the workers (they could be on other machines), and only rank 0 prints.
//! run-by: the MPI step of `cargo xtask test-all`, under `mpirun -n 3`
//! expect: ^\[0, 1, 4, 9, 16, 25\]$
use mproc_mpi::MpiPool;

fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    // Every rank calls `spmd()`: rank 0 gets the pool, the others serve until it is
    // dropped and then get `None`.
    if let Some(pool) = MpiPool::spmd().expect("start the MPI pool (run under mpirun -n 3)") {
        let squares = pool.map(square, 0..6u64).expect("map");
        println!("{squares:?}");
    }
}
