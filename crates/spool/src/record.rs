//! The on-disk record format of the local spool log.
//!
//! ```text
//! magic u32 | kind u8 | meta_len u32 | data_len u64 | crc32 u32 | meta | data
//! ```
//! All integers little-endian; the CRC covers kind, both lengths, meta and data. A record that
//! is cut short or fails its CRC ends the readable part of a segment (a torn tail after a crash:
//! it was never acknowledged, because acknowledgement follows the sync).

use crate::SpoolError;

pub const MAGIC: u32 = 0x5053_474D; // "MGSP"
pub const HEADER: usize = 4 + 1 + 4 + 8 + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A new message (or one relocated from an older segment): envelope JSON + content.
    Store = 1,
    /// A new state of a message: envelope JSON.
    Update = 2,
    /// A finished message: its id.
    Done = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Store),
            2 => Some(Kind::Update),
            3 => Some(Kind::Done),
            _ => None,
        }
    }
}

/// The header and meta of a record whose `data` is written right after them (not copied
/// here); the CRC covers the data all the same.
pub fn head(kind: Kind, meta: &[u8], data: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    let kind_b = [kind as u8];
    let ml = (meta.len() as u32).to_le_bytes();
    let dl = (data.len() as u64).to_le_bytes();
    crc.update(&kind_b);
    crc.update(&ml);
    crc.update(&dl);
    crc.update(meta);
    crc.update(data);
    let mut out = Vec::with_capacity(HEADER + meta.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&kind_b);
    out.extend_from_slice(&ml);
    out.extend_from_slice(&dl);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(meta);
    out
}

/// Appends one whole record to `out`; returns the offset of its data relative to the record
/// start.
pub fn encode(out: &mut Vec<u8>, kind: Kind, meta: &[u8], data: &[u8]) -> usize {
    let h = head(kind, meta, data);
    out.reserve(h.len() + data.len());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    h.len()
}

/// A decoded record borrowing from the segment bytes.
pub struct Decoded<'a> {
    pub kind: Kind,
    pub meta: &'a [u8],
    /// Offset of the data within the buffer passed to [`decode`].
    pub data_offset: usize,
    pub data_len: usize,
    /// Total length of the record.
    pub len: usize,
}

/// Decodes the record at `buf[at..]`. `Ok(None)` means a clean end or a torn tail.
pub fn decode(buf: &[u8], at: usize) -> Result<Option<Decoded<'_>>, SpoolError> {
    let b = &buf[at..];
    if b.len() < HEADER {
        return Ok(None);
    }
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    if u32_at(0) != MAGIC {
        return Ok(None);
    }
    let Some(kind) = Kind::from_u8(b[4]) else { return Ok(None) };
    let meta_len = u32_at(5) as usize;
    let data_len = u64::from_le_bytes(b[9..17].try_into().unwrap()) as usize;
    let want = u32_at(17);
    let total = HEADER.checked_add(meta_len).and_then(|n| n.checked_add(data_len));
    let Some(total) = total.filter(|t| *t <= b.len()) else { return Ok(None) };
    let mut crc = crc32fast::Hasher::new();
    crc.update(&b[4..17]);
    crc.update(&b[HEADER..total]);
    if crc.finalize() != want {
        return Ok(None);
    }
    Ok(Some(Decoded {
        kind,
        meta: &b[HEADER..HEADER + meta_len],
        data_offset: at + HEADER + meta_len,
        data_len,
        len: total,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_tail() {
        let mut buf = vec![];
        encode(&mut buf, Kind::Store, b"{}", b"hello");
        let first = buf.len();
        encode(&mut buf, Kind::Done, b"ID", b"");
        let r = decode(&buf, 0).unwrap().unwrap();
        assert_eq!(
            (r.kind, r.meta, &buf[r.data_offset..r.data_offset + r.data_len]),
            (Kind::Store, &b"{}"[..], &b"hello"[..])
        );
        let r = decode(&buf, first).unwrap().unwrap();
        assert_eq!(r.kind, Kind::Done);
        // A torn or corrupted tail reads as the end.
        assert!(decode(&buf[..buf.len() - 1], first).unwrap().is_none());
        let mut bad = buf.clone();
        bad[HEADER + 3] ^= 1;
        assert!(decode(&bad, 0).unwrap().is_none());
    }
}
