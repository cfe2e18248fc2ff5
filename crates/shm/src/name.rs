//! Segment names: checking them, and making fresh ones.
use crate::error::NameError;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// The longest file name `/dev/shm` accepts.
pub(crate) const NAME_MAX: usize = 255;

/// Checks a name as a user gave it (`"block"` or `"/block"`) and returns it without the
/// leading `/` (the form Python's `SharedMemory.name` shows).
pub(crate) fn check(name: &str) -> Result<&str, NameError> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let skipped = name.len() - bare.len();
    if bare.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some((at, ch)) = bare
        .char_indices()
        .find(|&(_, c)| !c.is_ascii_graphic() || c == '/')
    {
        return Err(NameError::BadCharacter {
            ch,
            at: at + skipped,
        });
    }
    if bare.len() > NAME_MAX {
        return Err(NameError::TooLong { len: bare.len() });
    }
    if bare == "." || bare == ".." {
        return Err(NameError::Reserved);
    }
    Ok(bare)
}

/// A fresh name: `mproc_` and 16 hex digits from the pid, a counter and a per-process
/// random key, so two processes (or two calls) never pick the same one by chance.
pub(crate) fn generate() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(rustix::process::getpid().as_raw_nonzero().get() as u32);
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    format!("mproc_{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(check("/abc"), Ok("abc"));
        assert_eq!(check("abc"), Ok("abc"));
        assert_eq!(check(""), Err(NameError::Empty));
        assert_eq!(check("/"), Err(NameError::Empty));
        assert_eq!(
            check("a/b"),
            Err(NameError::BadCharacter { ch: '/', at: 1 })
        );
        assert_eq!(
            check("/a b"),
            Err(NameError::BadCharacter { ch: ' ', at: 2 })
        );
        assert_eq!(check("é"), Err(NameError::BadCharacter { ch: 'é', at: 0 }));
        assert_eq!(
            check("a\0"),
            Err(NameError::BadCharacter { ch: '\0', at: 1 })
        );
        assert_eq!(check(".."), Err(NameError::Reserved));
        assert_eq!(
            check(&"x".repeat(256)),
            Err(NameError::TooLong { len: 256 })
        );
        assert!(check(&"x".repeat(255)).is_ok());
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(check(&a).is_ok());
    }
}
