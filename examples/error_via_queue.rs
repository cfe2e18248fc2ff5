//! A child catches an error and reports its text through a queue (errors are values:
//! the child sends `Err(text)`), and the parent prints it.
//! expect: ^child reported: invalid digit found in string$
use mproc::channel::Queue;
use mproc::spawn::Process;

fn child((input, report): (String, Queue<Result<i64, String>>)) {
    let outcome = input.parse::<i64>().map_err(|e| e.to_string());
    report.put(outcome).expect("put the outcome");
}

fn main() {
    let report: Queue<Result<i64, String>> = Queue::new().expect("create the queue");
    let mut p = Process::new(child, ("forty-two".to_string(), report.clone()));
    p.start().expect("start the child");
    match report.get().expect("get") {
        Ok(n) => println!("child parsed {n}"),
        Err(text) => println!("child reported: {text}"),
    }
    p.join().expect("join the child");
}
