//! The messages between the pool's rank and its workers. Each kind has its own MPI tag;
//! the fixed header comes first, then the payload (rkyv bytes or text). Tags stay far
//! below 32767, the smallest `MPI_TAG_UB` the standard allows.
use crate::error::MpiError;

/// Pool → worker: run a chunk. Header: task id, trampoline offset, function offset, the
/// fingerprint of the function's type.
pub(crate) const TAG_TASK: i32 = 101;
/// Worker → pool: a chunk's outcome. Header: task id, status (0 ok, 1 failed), 0.
pub(crate) const TAG_RESULT: i32 = 102;
/// Pool → worker: serve no more (empty).
pub(crate) const TAG_STOP: i32 = 103;
/// Worker → pool, once at start: layout fingerprint, pid, then the node's name.
pub(crate) const TAG_HELLO: i32 = 104;

pub(crate) const TASK_HEADER: usize = 32;
pub(crate) const RESULT_HEADER: usize = 16;
const HELLO_HEADER: usize = 16;

fn word(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i * 8..i * 8 + 8]);
    u64::from_le_bytes(w)
}

/// A task as it travels.
pub(crate) fn task(id: u64, tramp: u64, func: u64, sig: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(TASK_HEADER + payload.len());
    for w in [id, tramp, func, sig] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v.extend_from_slice(payload);
    v
}

/// A task's parts: id, trampoline offset, function offset, the fingerprint of the
/// function's type, payload.
pub(crate) type TaskFrame<'a> = (u64, u64, u64, u64, &'a [u8]);

/// Reads a task frame.
pub(crate) fn parse_task(b: &[u8]) -> Result<TaskFrame<'_>, MpiError> {
    if b.len() < TASK_HEADER {
        return Err(MpiError::Protocol(format!(
            "task message of {} bytes",
            b.len()
        )));
    }
    Ok((
        word(b, 0),
        word(b, 1),
        word(b, 2),
        word(b, 3),
        &b[TASK_HEADER..],
    ))
}

/// A result as it travels.
pub(crate) fn result(id: u64, outcome: &Result<rkyv::util::AlignedVec, String>) -> Vec<u8> {
    let (status, payload): (u64, &[u8]) = match outcome {
        Ok(bytes) => (0, bytes.as_slice()),
        Err(text) => (1, text.as_bytes()),
    };
    let mut v = Vec::with_capacity(RESULT_HEADER + payload.len());
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&status.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// Reads a result: (id, outcome bytes or the worker's error text).
pub(crate) fn parse_result(b: &[u8]) -> Result<(u64, Result<&[u8], String>), MpiError> {
    if b.len() < RESULT_HEADER {
        return Err(MpiError::Protocol(format!(
            "result message of {} bytes",
            b.len()
        )));
    }
    let payload = &b[RESULT_HEADER..];
    match word(b, 1) {
        0 => Ok((word(b, 0), Ok(payload))),
        1 => Ok((
            word(b, 0),
            Err(String::from_utf8_lossy(payload).into_owned()),
        )),
        s => Err(MpiError::Protocol(format!("result status {s}"))),
    }
}

/// The hello a worker sends first.
pub(crate) fn hello(layout: u64, pid: u32, node: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(HELLO_HEADER + node.len());
    v.extend_from_slice(&layout.to_le_bytes());
    v.extend_from_slice(&u64::from(pid).to_le_bytes());
    v.extend_from_slice(node.as_bytes());
    v
}

/// Reads a hello: (layout fingerprint, pid, node name).
pub(crate) fn parse_hello(b: &[u8]) -> Result<(u64, i32, String), MpiError> {
    if b.len() < HELLO_HEADER {
        return Err(MpiError::Protocol(format!(
            "hello message of {} bytes",
            b.len()
        )));
    }
    let pid = i32::try_from(word(b, 1)).map_err(|_| MpiError::Protocol("bad pid".into()))?;
    Ok((
        word(b, 0),
        pid,
        String::from_utf8_lossy(&b[HELLO_HEADER..]).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_short_ones_are_refused() {
        let t = task(7, 8, 9, 10, b"abc");
        assert_eq!(parse_task(&t).unwrap(), (7, 8, 9, 10, &b"abc"[..]));
        assert!(parse_task(&t[..10]).is_err());
        let r = result(5, &Err("boom".into()));
        assert_eq!(parse_result(&r).unwrap(), (5, Err("boom".into())));
        assert!(parse_result(&r[..3]).is_err());
        let mut bad = r.clone();
        bad[8] = 9;
        assert!(parse_result(&bad).is_err());
        let h = hello(1, 42, "node-a");
        assert_eq!(parse_hello(&h).unwrap(), (1, 42, "node-a".into()));
        assert!(parse_hello(&h[..4]).is_err());
    }
}
