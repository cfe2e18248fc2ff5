//! A named shared memory block (Python's `shared_memory.SharedMemory`): the parent
//! creates a segment of 1,000,000 `i64` holding 0..1,000,000, a child attaches to it
//! by name and prints the sum, then the parent unlinks it. Had the parent been killed
//! before `unlink`, its resource tracker would have removed the segment.
//! expect: ^499999500000$
//! expect: ^unlinked mproc_block_\d+$
use mproc::shm::SharedMemory;
use mproc::spawn::Process;

fn sum_by_name(name: String) -> i64 {
    let block = SharedMemory::open(&name).expect("attach by name");
    let sum: i64 = block.view_all::<i64>().iter().sum();
    println!("{sum}");
    sum
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const N: usize = 1_000_000;
    let name = format!("mproc_block_{}", std::process::id());
    let block = SharedMemory::create_named(&name, N * size_of::<i64>())?;
    let values: Vec<i64> = (0..N as i64).collect();
    block.view::<i64>(0, N)?.write_from(0, &values)?;

    let mut child = Process::new(sum_by_name, name.clone());
    child.start()?;
    let sum = child.join()?;
    assert_eq!(sum, 499_999_500_000);

    block.unlink()?;
    println!("unlinked {}", block.name());
    Ok(())
}
