//! The journal of a durable box: append-only segments of records, each framed so that a torn
//! tail is told apart from damage.
//!
//! ```text
//! segment  = header, record*
//! header   = b"WBJOURN\x1a", version u32, 0 u32, module fingerprint [32], first seq u64,
//!            CRC-32 of the 56 bytes before it (u32)                          — 60 bytes
//! record   = payload length u32, CRC-32 of the payload u32, payload (bincode of `Record`)
//! ```
//!
//! A segment named `journal-<S>` follows the checkpoint taken at sequence number `S` and holds
//! the events `S + 1, S + 2, …` in order. A crash during an append leaves a record cut short or
//! with a checksum that does not match *at the very end* of the last segment: that torn tail is
//! cut off and reported. A bad record followed by more bytes is damage, and an error.

use crate::error::{DurableError, Error};
use serde::{Deserialize, Serialize};

/// Magic bytes of a journal segment.
pub(crate) const MAGIC: [u8; 8] = *b"WBJOURN\x1a";
const VERSION: u32 = 1;
pub(crate) const HEADER_LEN: usize = 60;
const FRAME: usize = 8;

/// One journaled event. Every event has the next sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Record {
    /// An input, encoded with the box's codec, journaled before it runs.
    Message {
        seq: u64,
        #[serde(with = "serde_bytes")]
        input: Vec<u8>,
    },
    /// The message `seq` failed and was rolled back: replay skips it (its failure may have
    /// depended on wall time).
    Failed { seq: u64 },
    /// `set_time(millis)`.
    SetTime { seq: u64, millis: u64 },
    /// `advance_time` by this many nanoseconds.
    AdvanceTime { seq: u64, nanos: u64 },
}

impl Record {
    /// The sequence number the record is about.
    pub fn seq(&self) -> u64 {
        match *self {
            Record::Message { seq, .. }
            | Record::Failed { seq }
            | Record::SetTime { seq, .. }
            | Record::AdvanceTime { seq, .. } => seq,
        }
    }
}

/// The header of a new segment.
pub(crate) fn header(fingerprint: &[u8; 32], first_seq: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..48].copy_from_slice(fingerprint);
    h[48..56].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..56]);
    h[56..60].copy_from_slice(&crc.to_le_bytes());
    h
}

/// One record, framed.
pub(crate) fn frame(record: &Record, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0; FRAME]);
    bincode::Options::serialize_into(wasmbox::abi::options(u64::MAX), &mut *out, record)
        .unwrap_or_else(|e| unreachable!("a record always encodes into a Vec: {e}"));
    let len = (out.len() - FRAME) as u32;
    let crc = crc32fast::hash(&out[FRAME..]);
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// What a segment holds.
#[derive(Debug)]
pub(crate) struct Segment {
    /// The records, each with its offset in the file.
    pub records: Vec<(u64, Record)>,
    /// Bytes of the file that hold the header and whole, good records.
    pub good_len: u64,
    /// A torn tail: its offset and length, if the segment ends in one.
    pub torn: Option<(u64, u64)>,
}

/// Reads a segment's bytes: the header must be this box's (`fingerprint`) and start at
/// `first_seq`; a torn tail is reported, not an error.
pub(crate) fn parse(
    file: &str,
    bytes: &[u8],
    fingerprint: &[u8; 32],
    first_seq: u64,
) -> Result<Segment, Error> {
    let corrupt = |offset: u64, what: String| {
        Error::Durable(DurableError::Corrupt {
            file: file.to_string(),
            offset,
            what,
        })
    };
    let Some(h) = bytes.get(..HEADER_LEN) else {
        // A segment is created with its header in one synced write: shorter is a torn
        // creation, which holds no record.
        return Ok(Segment {
            records: Vec::new(),
            good_len: 0,
            torn: Some((0, bytes.len() as u64)),
        });
    };
    if h[0..8] != MAGIC {
        return Err(corrupt(
            0,
            "not a WasmBox journal segment (wrong magic)".into(),
        ));
    }
    let word = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    if word(56) != crc32fast::hash(&h[..56]) {
        return Err(corrupt(
            0,
            "the segment header's checksum does not match".into(),
        ));
    }
    if word(8) != VERSION {
        return Err(corrupt(
            0,
            format!("journal version {} is not supported", word(8)),
        ));
    }
    if h[16..48] != fingerprint[..] {
        return Err(Error::Durable(DurableError::WrongModule {
            file: file.to_string(),
            found: crate::snapshot::hex(&h[16..48]),
            expected: crate::snapshot::hex(fingerprint),
        }));
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&h[48..56]);
    let found_first = u64::from_le_bytes(seq_bytes);
    if found_first != first_seq {
        return Err(corrupt(
            48,
            format!("the segment says it starts after {found_first}, its name says {first_seq}"),
        ));
    }
    let mut records = Vec::new();
    let mut at = HEADER_LEN;
    let mut expected = first_seq + 1;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn = Ok(Segment {
            records: Vec::new(),
            good_len: at as u64,
            torn: Some((at as u64, rest.len() as u64)),
        });
        let Some(frame) = rest.get(..FRAME) else {
            return torn.map(|s| Segment { records, ..s });
        };
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let Some(payload) = rest.get(FRAME..FRAME + len) else {
            // Cut short — unless whole records follow: then the length itself is damaged,
            // and cutting the "tail" would throw them away.
            if let Some(later) = whole_record_after(bytes, at) {
                return Err(corrupt(
                    at as u64,
                    format!(
                        "a record's length is damaged (a whole record follows at byte {later})"
                    ),
                ));
            }
            return torn.map(|s| Segment { records, ..s });
        };
        let end = at + FRAME + len;
        if crc32fast::hash(payload) != crc {
            if end == bytes.len() {
                return torn.map(|s| Segment { records, ..s });
            }
            return Err(corrupt(
                at as u64,
                "a record's checksum does not match".into(),
            ));
        }
        let record: Record =
            bincode::Options::deserialize(wasmbox::abi::options(len as u64), payload)
                .map_err(|e| corrupt(at as u64, format!("a record does not decode: {e}")))?;
        // A `Failed` names the message before it; every other record the next number.
        let ok = match record {
            Record::Failed { seq } => seq + 1 == expected,
            ref r => r.seq() == expected,
        };
        if !ok {
            return Err(corrupt(
                at as u64,
                format!("record {} where {expected} was expected", record.seq()),
            ));
        }
        if !matches!(record, Record::Failed { .. }) {
            expected += 1;
        }
        records.push((at as u64, record));
        at = end;
    }
    Ok(Segment {
        records,
        good_len: at as u64,
        torn: None,
    })
}

/// The offset of a whole, valid record that starts after `at`, if any (looking at most 4 MiB
/// ahead: a torn tail is one record cut short, never that long).
fn whole_record_after(bytes: &[u8], at: usize) -> Option<usize> {
    let last = bytes.len().saturating_sub(FRAME).min(at + (4 << 20));
    (at + 1..last).find(|&k| {
        let frame = &bytes[k..k + FRAME];
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        len > 0
            && bytes
                .get(k + FRAME..k + FRAME + len)
                .is_some_and(|payload| {
                    crc32fast::hash(payload) == crc
                        && bincode::Options::deserialize::<Record>(
                            wasmbox::abi::options(len as u64),
                            payload,
                        )
                        .is_ok()
                })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: &[Record]) -> Vec<u8> {
        let mut bytes = header(&[3; 32], 10).to_vec();
        let mut buf = Vec::new();
        for r in records {
            frame(r, &mut buf);
            bytes.extend_from_slice(&buf);
        }
        bytes
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::Message {
                seq: 11,
                input: b"up".to_vec(),
            },
            Record::Failed { seq: 11 },
            Record::SetTime { seq: 12, millis: 5 },
            Record::Message {
                seq: 13,
                input: vec![1; 300],
            },
        ]
    }

    #[test]
    fn accept_records_round_trip() {
        let bytes = segment(&sample());
        let s = parse("j", &bytes, &[3; 32], 10).unwrap();
        let records: Vec<Record> = s.records.into_iter().map(|(_, r)| r).collect();
        assert_eq!(records, sample());
        assert_eq!(s.good_len, bytes.len() as u64);
        assert!(s.torn.is_none());
    }

    #[test]
    fn accept_every_torn_tail_and_keep_what_precedes_it() {
        let bytes = segment(&sample());
        let whole = parse("j", &bytes, &[3; 32], 10).unwrap();
        let last_start = whole.records[3].0 as usize;
        for cut in last_start + 1..bytes.len() {
            let s = parse("j", &bytes[..cut], &[3; 32], 10).unwrap();
            assert_eq!(s.records.len(), 3, "cut at {cut}");
            assert_eq!(s.good_len, last_start as u64);
            assert_eq!(s.torn, Some((last_start as u64, (cut - last_start) as u64)));
        }
        // A last record whose bytes are all there but wrong (a torn page): torn too.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(parse("j", &flipped, &[3; 32], 10).unwrap().records.len(), 3);
    }

    #[test]
    fn reject_damage_in_the_middle_naming_the_offset() {
        let bytes = segment(&sample());
        let whole = parse("j", &bytes, &[3; 32], 10).unwrap();
        let second = whole.records[1].0 as usize;
        let mut damaged = bytes.clone();
        damaged[second + FRAME] ^= 0x40;
        let err = parse("j", &damaged, &[3; 32], 10).unwrap_err();
        assert!(
            matches!(&err, Error::Durable(DurableError::Corrupt { offset, .. }) if *offset == second as u64),
            "{err}"
        );
        // A damaged length that points past the end is not a torn tail: records follow.
        let mut long = bytes.clone();
        long[second..second + 4].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
        let err = parse("j", &long, &[3; 32], 10).unwrap_err();
        assert!(
            matches!(&err, Error::Durable(DurableError::Corrupt { offset, .. }) if *offset == second as u64),
            "{err}"
        );
        assert!(parse("j", &bytes, &[4; 32], 10).is_err(), "another module");
        assert!(
            parse("j", &bytes, &[3; 32], 9).is_err(),
            "another first seq"
        );
        let gap = segment(&[Record::Message {
            seq: 12,
            input: vec![],
        }]);
        assert!(
            parse("j", &gap, &[3; 32], 10).is_err(),
            "a gap in the numbers"
        );
    }
}
