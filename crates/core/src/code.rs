//! Functions carried between processes as offsets, and the checks that make that safe.
//!
//! Processes that run the same executable file share its image layout, wherever ASLR
//! placed it: a function's address minus the address of a fixed anchor function is the
//! same in each. mproc sends a function to another process as that offset (a spawned
//! child's target, a pool task, a Barrier's action), and the receiver turns the offset
//! back into an address with [`code_addr`], which refuses anything outside the code of
//! its own executable. Calling the address (a transmute to the right `fn` type) stays
//! with the caller, in its own `unsafe` module, which knows the type.
//!
//! What a receiver checks before it calls anything:
//! - [`layout`]: the build identity, a hash of the program image's GNU build-id note
//!   (or, for an image linked without one, of its executable segments), read once from
//!   the running image. Two different binaries differ; an offset from another build is
//!   refused ([`CodeError::ForeignBuild`]).
//! - [`FnSig`]: a fingerprint of the function's type (its name and the archived layout
//!   of its input and output) travels with every offset; the typed receiver compares it
//!   with its own ([`CodeError::Signature`]).
//! - The family secret: a random key made once by the first process of a tree and
//!   handed to its children (inherited by fork, sent in the authenticated bootstrap
//!   message under spawn and forkserver). The spawn bootstrap is authenticated with
//!   keys derived from it ([`start_key`], [`mac`]), and a function that may travel
//!   inside a handle is [`seal`]ed with it: only a process of the same tree can
//!   [`unseal`] it ([`CodeError::NotSealed`] for bytes from anyone else).
//!
//! ```
//! use mproc_core::code;
//! fn task() -> u32 { 7 }
//! let off = code::offset_of(task as fn() -> u32 as usize);
//! assert_eq!(code::code_addr(off), Some(task as fn() -> u32 as usize));
//! assert_eq!(code::code_addr(off.wrapping_add(1 << 40)), None);
//!
//! let sig = code::FnSig::of::<fn(u32) -> u32, u32, u32>();
//! let sealed = code::seal(task as fn() -> u32 as usize, sig);
//! assert_eq!(code::unseal(&sealed, sig), Ok(task as fn() -> u32 as usize));
//! let other = code::FnSig::of::<fn(u64) -> u32, u64, u32>();
//! assert!(matches!(code::unseal(&sealed, other), Err(code::CodeError::Signature { .. })));
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

/// The identity of this build: equal in two processes only if they run the same build
/// of the same program.
///
/// A hash of the GNU build-id note of the image that holds mproc's code (read from the
/// running image through the dynamic loader), or of that image's executable segments
/// if it was linked without a build-id, mixed with the offset of a second fixed
/// function from the anchor. Computed once; never `0`.
pub fn layout() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        let mut h = Fx::new();
        h.write(b"mproc build identity v1");
        match crate::image::program_image(anchor_addr()) {
            Some(crate::image::Image {
                build_id: Some(id), ..
            }) => {
                h.write(b"build-id");
                h.write(&id);
            }
            Some(crate::image::Image {
                text_hash: Some(t), ..
            }) => {
                h.write(b"text");
                h.write_u64(t);
            }
            // Not found through the loader (cannot happen for a loaded image): the
            // executable file's identity is the next best thing.
            _ => h.write_u64(exe_identity()),
        }
        h.write_u64(offset_of(layout_probe as fn() -> u64 as usize));
        h.finish() | 1
    })
}

/// Whether the kernel runs this program in secure mode (`getauxval(AT_SECURE)`: a
/// set-user-ID, set-group-ID or file-capability binary, or an LSM's request). mproc
/// never dispatches to a function named by its environment in such a process.
pub fn secure_mode() -> bool {
    crate::image::at_secure()
}

/// Checks that `build` is this build's [`layout`] and that `offset` lands in this
/// program's code; the address.
pub fn checked_addr(build: u64, offset: u64) -> Result<usize, CodeError> {
    let ours = layout();
    if build != ours {
        return Err(CodeError::ForeignBuild {
            ours,
            theirs: build,
        });
    }
    code_addr(offset).ok_or(CodeError::OutsideCode)
}

/// The identity of the running executable file (device, inode, size, modification
/// time), hashed; `0` if it cannot be read. Computed once. Weaker than [`layout`] (a
/// copy or a rebuilt file in place differ, the same file run twice does not): [`layout`]
/// falls back to it only if the loader does not know the program image.
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

/// Reads this program's code ranges, build identity and family secret now (a process
/// about to fork many children computes them once, instead of each child doing it
/// again; fork children share the family secret this way).
pub fn warm() {
    code_ranges();
    exe_identity();
    layout();
    family_secret();
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

// ---------------------------------------------------------------------------------
// Type fingerprints.

/// A fingerprint of a function's type: a stable hash of its type name and of the
/// archived size and alignment of its input and output. Sent with every function
/// offset; the typed receiver compares it with its own before it calls anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FnSig {
    /// The hash that travels.
    pub hash: u64,
    /// The type's name (for error messages; only meaningful in the process that made it).
    pub name: &'static str,
}

impl FnSig {
    /// The fingerprint of the fn-pointer type `F` whose input archives as `In` and whose
    /// output archives as `Out` (for example `FnSig::of::<fn(A) -> R, A, R>()`).
    pub fn of<F: ?Sized, In: rkyv::Archive, Out: rkyv::Archive>() -> FnSig {
        let name = std::any::type_name::<F>();
        let mut h = Fx::new();
        h.write(name.as_bytes());
        for n in [
            std::mem::size_of::<rkyv::Archived<In>>(),
            std::mem::align_of::<rkyv::Archived<In>>(),
            std::mem::size_of::<rkyv::Archived<Out>>(),
            std::mem::align_of::<rkyv::Archived<Out>>(),
        ] {
            h.write_u64(n as u64);
        }
        FnSig {
            hash: h.finish(),
            name,
        }
    }

    /// Checks that a received fingerprint is this one; `found_name` names the sender's
    /// type if the message carried it.
    pub fn check(&self, found: u64, found_name: Option<&str>) -> Result<(), CodeError> {
        if found == self.hash {
            return Ok(());
        }
        Err(CodeError::Signature {
            expected: self.name,
            found: match found_name {
                Some(n) => n.to_owned(),
                None => format!("another function type (fingerprint {found:016x})"),
            },
        })
    }
}

/// A fast, stable (same in every process and build) 64-bit hash of bytes.
#[derive(Debug)]
pub(crate) struct Fx(u64);

impl Fx {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    pub(crate) fn new() -> Self {
        Fx(0x6d70_726f_6366_7831)
    }
    pub(crate) fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(Self::K);
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let mut last = [0u8; 8];
        let rest = chunks.remainder();
        last[..rest.len()].copy_from_slice(rest);
        self.write_u64(u64::from_le_bytes(last) ^ ((bytes.len() as u64) << 56));
    }
    pub(crate) fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
}

// ---------------------------------------------------------------------------------
// The family secret, and what it authenticates.

/// The key of this process tree: made from the OS's random source by the first process,
/// inherited by its children (see the module docs). Computed once.
fn family_secret() -> &'static [u8; 32] {
    FAMILY.get_or_init(|| {
        let mut k = [0u8; 32];
        if getrandom::fill(&mut k).is_err() {
            // No random source (a sandbox without getrandom and /dev/urandom): std's
            // randomly seeded hasher keys, which come from the same source if it exists
            // at all, are the fallback.
            use std::hash::{BuildHasher, Hasher};
            for (i, c) in k.chunks_exact_mut(8).enumerate() {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_usize(i);
                h.write_u32(std::process::id());
                c.copy_from_slice(&h.finish().to_le_bytes());
            }
        }
        k
    })
}

static FAMILY: OnceLock<[u8; 32]> = OnceLock::new();

/// The family secret, for a bootstrap message to a child. Not part of the API.
#[doc(hidden)]
pub fn family_secret_for_child() -> [u8; 32] {
    *family_secret()
}

/// A freshly started child adopts its parent's family secret (from an authenticated
/// bootstrap message), before anything else in it has used the secret. Not part of the
/// API. Fails (with the reason) if this process already has a different secret.
#[doc(hidden)]
pub fn adopt_family_secret(k: [u8; 32]) -> Result<(), &'static str> {
    if *FAMILY.get_or_init(|| k) == k {
        Ok(())
    } else {
        Err("this process already uses another family secret than its parent's")
    }
}

/// HMAC-SHA256 of the concatenation of `parts` under `key`.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::Mac;
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .expect("HMAC accepts keys of any length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Compares two MACs in constant time.
pub fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key that authenticates one start's bootstrap message (or one fork server's
/// requests): derived from the family secret and a nonce that names that start.
pub fn start_key(nonce: u64) -> [u8; 32] {
    mac(family_secret(), &[b"mproc start key", &nonce.to_le_bytes()])
}

/// A function sealed for travel inside a handle: only a process of the same family
/// (the same tree of processes, so the same build) can [`unseal`] it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedFn {
    /// Offset from the anchor ([`offset_of`]).
    pub offset: u64,
    /// [`FnSig::hash`] of its type.
    pub sig: u64,
    /// The seal: a MAC over the build identity, the offset and the fingerprint.
    pub tag: [u8; 16],
}

fn seal_tag(offset: u64, sig: u64) -> [u8; 16] {
    let full = mac(
        family_secret(),
        &[
            b"mproc sealed fn",
            &layout().to_le_bytes(),
            &offset.to_le_bytes(),
            &sig.to_le_bytes(),
        ],
    );
    full[..16].try_into().expect("16 bytes")
}

/// Seals the function at `addr` (of this program, of the type `sig` describes).
pub fn seal(addr: usize, sig: FnSig) -> SealedFn {
    let offset = offset_of(addr);
    SealedFn {
        offset,
        sig: sig.hash,
        tag: seal_tag(offset, sig.hash),
    }
}

/// The address of a sealed function, if this process's family sealed it (so it comes
/// from this build, and from no foreign peer), it has the type `expected` describes, and
/// it lands in this program's code.
pub fn unseal(f: &SealedFn, expected: FnSig) -> Result<usize, CodeError> {
    if !mac_eq(&seal_tag(f.offset, f.sig), &f.tag) {
        return Err(CodeError::NotSealed);
    }
    expected.check(f.sig, None)?;
    code_addr(f.offset).ok_or(CodeError::OutsideCode)
}

/// Why a function given by its offset was refused. Never carries an address.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodeError {
    /// The offset was measured in another build of the program (or another program).
    ForeignBuild {
        /// This process's [`layout`].
        ours: u64,
        /// The sender's.
        theirs: u64,
    },
    /// The offset does not land in this program's code.
    OutsideCode,
    /// The function's type is not the one the receiver expects.
    Signature {
        /// The receiver's type.
        expected: &'static str,
        /// The sender's type (its name, when the message carried it).
        found: String,
    },
    /// The function was not sealed by this process family: it comes from a foreign peer
    /// (or was altered on the way).
    NotSealed,
}

impl std::fmt::Display for CodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodeError::ForeignBuild { ours, theirs } => write!(
                f,
                "function from another build (build identity {theirs:016x}, this build is {ours:016x})"
            ),
            CodeError::OutsideCode => {
                f.write_str("function offset does not point into this program's code")
            }
            CodeError::Signature { expected, found } => write!(
                f,
                "function type mismatch: the receiver expects {expected}, the sender sent {found}"
            ),
            CodeError::NotSealed => f.write_str(
                "function not sealed by this process family (from a foreign peer, or altered)",
            ),
        }
    }
}

impl std::error::Error for CodeError {}

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
        assert_eq!(layout(), layout());
        assert_ne!(exe_identity(), 0);
    }

    #[test]
    fn build_identity_is_the_build_id_note() {
        // The build-id the linker wrote into the file, read independently of the loader.
        let file = std::fs::read("/proc/self/exe").unwrap();
        let id = crate::image::program_image(anchor_addr())
            .and_then(|i| i.build_id)
            .expect("this test binary has a build-id");
        assert!(id.len() >= 8);
        assert!(
            file.windows(id.len()).any(|w| w == id.as_slice()),
            "the build-id read from memory is in the file"
        );
        let mut h = Fx::new();
        h.write(b"mproc build identity v1");
        h.write(b"build-id");
        h.write(&id);
        h.write_u64(offset_of(layout_probe as fn() -> u64 as usize));
        assert_eq!(layout(), h.finish() | 1);
        // Another build (another id) gets another identity.
        let mut other = id.clone();
        other[0] ^= 1;
        let mut h2 = Fx::new();
        h2.write(b"mproc build identity v1");
        h2.write(b"build-id");
        h2.write(&other);
        h2.write_u64(offset_of(layout_probe as fn() -> u64 as usize));
        assert_ne!(layout(), h2.finish() | 1);
        let f = exe_identity as fn() -> u64 as usize;
        assert_eq!(checked_addr(layout(), offset_of(f)), Ok(f));
        assert!(matches!(
            checked_addr(layout() ^ 2, offset_of(f)),
            Err(CodeError::ForeignBuild { .. })
        ));
        assert_eq!(
            checked_addr(layout(), u64::MAX / 2),
            Err(CodeError::OutsideCode)
        );
    }

    #[test]
    fn signatures_tell_types_apart() {
        let a = FnSig::of::<fn(u64) -> u64, u64, u64>();
        let b = FnSig::of::<fn(String) -> u64, String, u64>();
        assert_eq!(a, FnSig::of::<fn(u64) -> u64, u64, u64>());
        assert_ne!(a.hash, b.hash);
        let e = a.check(b.hash, Some(b.name)).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("fn(u64) -> u64") && text.contains("String"),
            "{text}"
        );
    }

    #[test]
    fn seals_hold_only_within_the_family() {
        let f = exe_identity as fn() -> u64 as usize;
        let sig = FnSig::of::<fn() -> u64, (), u64>();
        let s = seal(f, sig);
        assert_eq!(unseal(&s, sig), Ok(f));
        // Another offset, another type, or a tag made with another key: refused.
        let moved = SealedFn {
            offset: s.offset + 16,
            ..s
        };
        assert_eq!(unseal(&moved, sig), Err(CodeError::NotSealed));
        let mut forged = s;
        forged.tag = mac(&[9u8; 32], &[b"mproc sealed fn"])[..16]
            .try_into()
            .unwrap();
        assert_eq!(unseal(&forged, sig), Err(CodeError::NotSealed));
        let other = FnSig::of::<fn() -> u32, (), u32>();
        assert!(matches!(
            unseal(&s, other),
            Err(CodeError::Signature { .. })
        ));
        // No error text shows an address.
        for e in [CodeError::NotSealed, CodeError::OutsideCode] {
            assert!(!e.to_string().contains("0x"));
        }
        assert!(mac_eq(&start_key(1), &start_key(1)));
        assert!(!mac_eq(&start_key(1), &start_key(2)));
    }
}
