//! Functions carried between processes as offsets.
//!
//! Processes that run the same executable file share its image layout, wherever ASLR
//! placed it: a function's address minus the address of a fixed anchor function is the
//! same in each. mproc sends a function to another process as that offset (a spawned
//! child's target, a pool task, a Barrier's action), and the receiver turns the offset
//! back into an address with [`code_addr`], which refuses anything outside the code of
//! its own executable. Calling the address (a transmute to the right `fn` type) stays
//! with the caller, in its own `unsafe` module, which knows the type.
//!
//! [`layout`] and [`exe_identity`] let a receiver check first that the sender ran the
//! same build of the same file.
//!
//! ```
//! use mproc_core::code;
//! fn task() -> u32 { 7 }
//! let off = code::offset_of(task as fn() -> u32 as usize);
//! assert_eq!(code::code_addr(off), Some(task as fn() -> u32 as usize));
//! assert_eq!(code::code_addr(off.wrapping_add(1 << 40)), None);
//! ```
use std::sync::OnceLock;

/// The fixed point offsets are measured from. Not inlined, with a body of its own that
/// identical-code folding cannot merge with another function.
#[inline(never)]
fn anchor() -> u64 {
    std::hint::black_box(0x6d70_726f_6363_6f64u64).rotate_left(5)
}

/// A second fixed function: its offset from the anchor fingerprints the build.
#[inline(never)]
fn layout_probe() -> u64 {
    std::hint::black_box(0x6c61_796f_7574_0001u64) ^ 3
}

fn anchor_addr() -> usize {
    anchor as fn() -> u64 as usize
}

/// The offset of `addr` (the address of a function of this executable) from the anchor.
pub fn offset_of(addr: usize) -> u64 {
    addr.wrapping_sub(anchor_addr()) as u64
}

/// The address `offset` stands for in this process, if it lies in the executable code of
/// this program's file; `None` otherwise (or if `/proc/self/maps` cannot be read).
pub fn code_addr(offset: u64) -> Option<usize> {
    let addr = anchor_addr().wrapping_add(offset as usize);
    is_code(addr).then_some(addr)
}

/// Whether `addr` lies in an executable mapping of this program's file.
pub fn is_code(addr: usize) -> bool {
    code_ranges()
        .iter()
        .any(|&(lo, hi)| lo <= addr && addr < hi)
}

/// A fingerprint of this build's layout: equal in two processes only if they run the
/// same build (the offset of a second fixed function from the anchor).
pub fn layout() -> u64 {
    offset_of(layout_probe as fn() -> u64 as usize)
}

/// The identity of the running executable file (device, inode, size, modification
/// time), hashed; `0` if it cannot be read. Computed once.
pub fn exe_identity() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| match rustix::fs::stat("/proc/self/exe") {
        Ok(st) => {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for x in [
                st.st_dev,
                st.st_ino,
                st.st_size as u64,
                st.st_mtime as u64,
                st.st_mtime_nsec,
            ] {
                h = (h ^ x).wrapping_mul(0x0000_0100_0000_01b3);
            }
            h | 1
        }
        Err(_) => 0,
    })
}

/// Reads this program's code ranges now (a process about to fork many children reads
/// them once, instead of each child reading them again).
pub fn warm() {
    code_ranges();
    exe_identity();
}

/// The executable mappings of the file that holds the anchor (the program image).
fn code_ranges() -> &'static [(usize, usize)] {
    static RANGES: OnceLock<Vec<(usize, usize)>> = OnceLock::new();
    RANGES.get_or_init(|| {
        let a = anchor_addr();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let rows: Vec<(usize, usize, bool, &str)> = maps
            .lines()
            .filter_map(|l| {
                let mut it = l.split_ascii_whitespace();
                let range = it.next()?;
                let perms = it.next()?;
                let path = it.nth(3).unwrap_or("");
                let (lo, hi) = range.split_once('-')?;
                let lo = usize::from_str_radix(lo, 16).ok()?;
                let hi = usize::from_str_radix(hi, 16).ok()?;
                Some((lo, hi, perms.contains('x'), path))
            })
            .collect();
        let Some(image) = rows
            .iter()
            .find(|r| r.0 <= a && a < r.1)
            .map(|r| r.3)
            .filter(|p| !p.is_empty())
        else {
            return Vec::new();
        };
        rows.iter()
            .filter(|r| r.2 && r.3 == image)
            .map(|r| (r.0, r.1))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_stay_inside_the_code() {
        let f = exe_identity as fn() -> u64 as usize;
        assert_eq!(code_addr(offset_of(f)), Some(f));
        assert!(is_code(anchor_addr()));
        // Data, the stack and far-away addresses are not code.
        let on_stack = 0u8;
        assert!(!is_code(&on_stack as *const u8 as usize));
        assert!(code_addr(u64::MAX / 2).is_none());
        assert_ne!(layout(), 0);
        assert_ne!(exe_identity(), 0);
    }
}
