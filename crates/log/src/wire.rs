//! The records' byte format. One record is one `SOCK_SEQPACKET` message, so a child
//! killed while writing leaves either the whole record or nothing.
//!
//! `kind u8 | level u8 | line u32 LE | fields…`, each field a `u32 LE` length and UTF-8
//! bytes. The parent checks every length against the message it received.

/// The largest record a child sends; longer messages are cut (at a char boundary).
pub(crate) const MAX_RECORD: usize = 60 * 1024;

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The first message of a connection: the process name.
    Hello = 0,
    /// A `log` record.
    Log = 1,
    /// A `tracing` event.
    Tracing = 2,
    /// A line the child wrote to its stdout (level 0) or stderr (level 1).
    Output = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Hello,
            1 => Kind::Log,
            2 => Kind::Tracing,
            3 => Kind::Output,
            _ => return None,
        })
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) kind: Kind,
    /// `log::Level as u8` (1 = error … 5 = trace); for output, the stream.
    pub(crate) level: u8,
    pub(crate) line: u32,
    /// Hello: [name]. Log: [target, module, file, message].
    /// Tracing: [target, module, file, spans, message]. Output: [line].
    pub(crate) fields: Vec<String>,
}

/// Encodes a record into `out` (cleared first), cutting fields so the whole fits
/// [`MAX_RECORD`].
pub(crate) fn encode(kind: Kind, level: u8, line: u32, fields: &[&str], out: &mut Vec<u8>) {
    out.clear();
    out.push(kind as u8);
    out.push(level);
    out.extend_from_slice(&line.to_le_bytes());
    let mut room = MAX_RECORD - 6 - 4 * fields.len();
    for f in fields {
        let f = cut(f, room);
        room -= f.len();
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f.as_bytes());
    }
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decodes a record; `None` if it is malformed (the parent then drops the connection).
pub(crate) fn decode(mut buf: &[u8]) -> Option<Record> {
    if buf.len() < 6 {
        return None;
    }
    let kind = Kind::from_u8(buf[0])?;
    let level = buf[1];
    let line = u32::from_le_bytes(buf[2..6].try_into().ok()?);
    buf = &buf[6..];
    let want = match kind {
        Kind::Hello | Kind::Output => 1,
        Kind::Log => 4,
        Kind::Tracing => 5,
    };
    let mut fields = Vec::with_capacity(want);
    for _ in 0..want {
        if buf.len() < 4 {
            return None;
        }
        let n = u32::from_le_bytes(buf[..4].try_into().ok()?) as usize;
        buf = &buf[4..];
        if buf.len() < n {
            return None;
        }
        fields.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        buf = &buf[n..];
    }
    buf.is_empty().then_some(Record {
        kind,
        level,
        line,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let mut out = Vec::new();
        encode(Kind::Log, 3, 42, &["t", "m", "f.rs", "hello"], &mut out);
        let r = decode(&out).unwrap();
        assert_eq!(r.kind, Kind::Log);
        assert_eq!((r.level, r.line), (3, 42));
        assert_eq!(r.fields, ["t", "m", "f.rs", "hello"]);
        for n in 0..out.len() {
            assert!(decode(&out[..n]).is_none(), "a record cut at {n} decoded");
        }
        let mut long = out.clone();
        long.push(0);
        assert!(decode(&long).is_none());
        let mut bad = out.clone();
        bad[0] = 9;
        assert!(decode(&bad).is_none());
    }

    #[test]
    fn long_fields_are_cut_to_fit() {
        let big = "é".repeat(MAX_RECORD);
        let mut out = Vec::new();
        encode(Kind::Log, 1, 0, &["t", "m", "f", &big], &mut out);
        assert!(out.len() <= MAX_RECORD);
        let r = decode(&out).unwrap();
        assert!(r.fields[3].chars().all(|c| c == 'é'));
    }
}
