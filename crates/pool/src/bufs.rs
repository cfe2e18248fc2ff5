//! A small process-wide stock of large, 16-byte-aligned buffers (encoded chunks, frames,
//! received results). A map of many items moves its data through a few such buffers per
//! chunk; allocating them fresh each time means the allocator hands the memory back to
//! the kernel and faults it in again page by page, which costs more than the copies.
//! The stock is bounded, and every access is a `try_lock` (a forked child never waits
//! for a lock some other thread of its parent held at the fork).
use rkyv::util::AlignedVec;
use std::sync::Mutex;

/// Buffers smaller than this are not worth keeping.
const MIN: usize = 16 * 1024;
/// At most this many bytes are kept (a forked child copies the page tables of every
/// byte the parent holds, so the stock stays small).
const LIMIT: usize = 8 << 20;

struct Stock {
    bufs: Vec<AlignedVec>,
    bytes: usize,
}

static STOCK: Mutex<Stock> = Mutex::new(Stock {
    bufs: Vec::new(),
    bytes: 0,
});

/// An empty buffer with room for at least `cap` bytes.
pub(crate) fn take(cap: usize) -> AlignedVec {
    if cap >= MIN
        && let Ok(mut s) = STOCK.try_lock()
    {
        // The smallest kept buffer that fits.
        let best = s
            .bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= cap)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let b = s.bufs.swap_remove(i);
            s.bytes -= b.capacity();
            return b;
        }
    }
    AlignedVec::with_capacity(cap)
}

/// Returns a buffer to the stock (or frees it, if the stock is full).
pub(crate) fn give(mut b: AlignedVec) {
    let cap = b.capacity();
    if cap < MIN {
        return;
    }
    b.clear();
    if let Ok(mut s) = STOCK.try_lock()
        && s.bytes + cap <= LIMIT
    {
        s.bytes += cap;
        s.bufs.push(b);
    }
}

/// Frees every kept buffer (the last pool of the process is gone).
pub(crate) fn clear() {
    if let Ok(mut s) = STOCK.try_lock() {
        s.bufs = Vec::new();
        s.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_given_buffer_comes_back_cleared() {
        let mut b = super::take(1 << 20);
        b.extend_from_slice(&[1, 2, 3]);
        let p = b.as_ptr();
        super::give(b);
        let b = super::take(1 << 20);
        assert!(b.is_empty());
        assert!(b.capacity() >= 1 << 20);
        // Another test may have taken it meanwhile; when not, it is the same memory.
        let _ = p;
    }
}
