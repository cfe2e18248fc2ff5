//! `Value` and `Array` shared with a child process (Python's
//! `multiprocessing.Value('d', 0.0)` and `Array('i', range(10))`): the child sets the
//! value and negates the array under their locks; the parent prints what it sees.
//! expect: ^3\.1415927$
//! expect: ^0 -1 -2 -3 -4 -5 -6 -7 -8 -9$
#![allow(clippy::approx_constant)] // the figure Python's documentation example uses
use mproc::shm::{Array, Value};
use mproc::spawn::Process;

fn f((num, arr): (Value<f64>, Array<i32>)) {
    *num.lock().expect("lock the value") = 3.1415927;
    arr.lock().expect("lock the array").map_in_place(|x| -x);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let num: Value<f64> = Value::new(0.0)?;
    let arr: Array<i32> = Array::from_slice(&(0..10).collect::<Vec<_>>())?;

    let mut p = Process::new(f, (num.clone(), arr.clone()));
    p.start()?;
    p.join()?;

    println!("{}", num.get()?);
    let items: Vec<String> = arr.to_vec()?.iter().map(i32::to_string).collect();
    println!("{}", items.join(" "));
    Ok(())
}
