//! The running program image, read through the dynamic loader: its GNU build-id note
//! (or, without one, its executable segments) and the kernel's `AT_SECURE` flag.
//!
//! # Safety
//!
//! `dl_iterate_phdr` hands its callback the loader's own program-header tables, valid
//! for the duration of the callback; the segments they describe are mapped at
//! `dlpi_addr + p_vaddr` for `p_memsz` bytes (PT_LOAD segments are mapped readable,
//! notes lie inside a loaded segment). The callback only reads them.
use std::ffi::c_void;

/// What [`program_image`] found about the object that holds `anchor`.
#[derive(Debug, Default)]
pub(crate) struct Image {
    /// The GNU build-id note's descriptor, if the object has one.
    pub(crate) build_id: Option<Vec<u8>>,
    /// A hash of the object's executable segments (computed only without a build-id).
    pub(crate) text_hash: Option<u64>,
}

struct Search {
    anchor: usize,
    found: Option<Image>,
}

const NT_GNU_BUILD_ID: u32 = 3;

/// Finds the loaded object whose segments contain `anchor` and reads its identity.
pub(crate) fn program_image(anchor: usize) -> Option<Image> {
    let mut s = Search {
        anchor,
        found: None,
    };
    // SAFETY: the callback matches the signature glibc expects and only reads the
    // structures it is handed (module invariants); `s` outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(visit), (&mut s as *mut Search).cast::<c_void>());
    }
    s.found
}

unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> i32 {
    // SAFETY: `data` is the `Search` passed by `program_image`; `info` is valid for
    // the duration of this call (module invariants).
    let (s, info) = unsafe { (&mut *data.cast::<Search>(), &*info) };
    if info.dlpi_phdr.is_null() || info.dlpi_phnum == 0 {
        return 0;
    }
    // SAFETY: the loader's table of `dlpi_phnum` program headers.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let base = info.dlpi_addr as usize;
    let holds_anchor = phdrs.iter().any(|p| {
        let lo = base.wrapping_add(p.p_vaddr as usize);
        p.p_type == libc::PT_LOAD && lo <= s.anchor && s.anchor < lo + p.p_memsz as usize
    });
    if !holds_anchor {
        return 0;
    }
    let mut image = Image::default();
    for p in phdrs.iter().filter(|p| p.p_type == libc::PT_NOTE) {
        let at = base.wrapping_add(p.p_vaddr as usize) as *const u8;
        // SAFETY: a PT_NOTE segment of a loaded object lies inside a mapped, readable
        // PT_LOAD segment (module invariants).
        let notes = unsafe { std::slice::from_raw_parts(at, p.p_memsz as usize) };
        if let Some(id) = build_id_in(notes, p.p_align.max(4) as usize) {
            image.build_id = Some(id.to_vec());
            break;
        }
    }
    if image.build_id.is_none() {
        let mut h = crate::code::Fx::new();
        for p in phdrs
            .iter()
            .filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_X != 0)
        {
            let at = base.wrapping_add(p.p_vaddr as usize) as *const u8;
            // SAFETY: an executable PT_LOAD segment, mapped readable for `p_filesz`
            // bytes (module invariants).
            let text = unsafe { std::slice::from_raw_parts(at, p.p_filesz as usize) };
            h.write(text);
        }
        image.text_hash = Some(h.finish());
    }
    s.found = Some(image);
    1
}

/// The descriptor of the NT_GNU_BUILD_ID note among `notes`, if any.
fn build_id_in(mut notes: &[u8], align: usize) -> Option<&[u8]> {
    let align = if align == 8 { 8 } else { 4 };
    let pad = |n: usize| n.div_ceil(align) * align;
    while notes.len() >= 12 {
        let word = |i: usize| u32::from_ne_bytes(notes[i..i + 4].try_into().expect("4 bytes"));
        let (namesz, descsz, kind) = (word(0) as usize, word(4) as usize, word(8));
        let name_end = 12usize.checked_add(pad(namesz))?;
        let desc_end = name_end.checked_add(pad(descsz))?;
        if kind == NT_GNU_BUILD_ID && notes.get(12..12 + namesz)? == b"GNU\0" && descsz > 0 {
            return notes.get(name_end..name_end + descsz);
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

/// Whether the kernel started this program in secure mode (`getauxval(AT_SECURE)`:
/// set-user-ID, set-group-ID or file capabilities, or an LSM asked for it).
pub(crate) fn at_secure() -> bool {
    // SAFETY: getauxval only reads the auxiliary vector; an absent entry gives 0.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_notes() {
        let mut n = Vec::new();
        // An ABI tag note first, then the build-id.
        for (name, kind, desc) in [
            (&b"GNU\0"[..], 1u32, &[0u8; 16][..]),
            (&b"GNU\0"[..], NT_GNU_BUILD_ID, &[7u8, 8, 9, 10, 11][..]),
        ] {
            n.extend_from_slice(&(name.len() as u32).to_ne_bytes());
            n.extend_from_slice(&(desc.len() as u32).to_ne_bytes());
            n.extend_from_slice(&kind.to_ne_bytes());
            n.extend_from_slice(name);
            n.extend_from_slice(desc);
            while n.len() % 4 != 0 {
                n.push(0);
            }
        }
        assert_eq!(build_id_in(&n, 4), Some(&[7u8, 8, 9, 10, 11][..]));
        assert_eq!(build_id_in(&n[..20], 4), None);
        assert_eq!(build_id_in(&[0xff; 40], 4), None);
    }
}
