//! The stored form of a customer's facts: the encoded `CustomerFacts` framed as an entry
//! of `StreamFactsResponse.facts` (field 1, wire type 2: `0x0A`, the length as a varint,
//! the message). A facts row keeps this form (column `framed`), so a page of a
//! whole-tenant `StreamFacts` is the stored values one after another; this module writes
//! the frame, reads it back, and cuts and checks pages of frames.

use prost::Message as _;
use winback_proto::profiles::CustomerFacts;

/// `facts` in its stored form.
pub(crate) fn framed_facts(facts: &CustomerFacts) -> Vec<u8> {
    let mut framed = Vec::with_capacity(facts.encoded_len() + 4);
    prost::encoding::message::encode(1, facts, &mut framed);
    framed
}

/// The message of the next field-1 entry of `framed`, advancing `framed` past it; `None`
/// if `framed` does not start with a whole one.
fn next_entry<'a>(framed: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (&key, mut rest) = framed.split_first()?;
    if key != 0x0A {
        return None;
    }
    let len = usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?;
    let entry = rest.get(..len)?;
    *framed = rest.get(len..)?;
    Some(entry)
}

/// The encoded `CustomerFacts` inside one stored value.
pub(crate) fn unframed(framed: &[u8]) -> Result<&[u8], sea_orm::DbErr> {
    let mut rest = framed;
    next_entry(&mut rest)
        .filter(|_| rest.is_empty())
        .ok_or_else(|| sea_orm::DbErr::Custom("malformed stored facts".into()))
}

/// Whether the entries are in strictly ascending customer id order, all after `after`.
/// A `CustomerFacts` starts with its `customer_id`, itself a field-1 entry (absent when
/// empty).
pub(crate) fn ids_ascend(mut framed: &[u8], after: &str) -> bool {
    let mut previous = after.as_bytes();
    while !framed.is_empty() {
        let Some(mut entry) = next_entry(&mut framed) else {
            return false;
        };
        let id = next_entry(&mut entry).unwrap_or_default();
        if id <= previous {
            return false;
        }
        previous = id;
    }
    true
}

/// Splits entries into runs of `per_chunk` entries (the last may be shorter); `None` if
/// the bytes are not whole entries.
pub(crate) fn split_framed(mut framed: &[u8], per_chunk: usize) -> Option<Vec<&[u8]>> {
    let mut runs = Vec::new();
    while !framed.is_empty() {
        let mut rest = framed;
        let mut entries = 0;
        while entries < per_chunk.max(1) && !rest.is_empty() {
            next_entry(&mut rest)?;
            entries += 1;
        }
        let (run, tail) = framed.split_at(framed.len() - rest.len());
        runs.push(run);
        framed = tail;
    }
    Some(runs)
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use winback_proto::profiles::{CustomerFacts, StreamFactsResponse};

    use super::*;

    #[test]
    fn framed_entries_split_into_chunks_that_decode_as_responses() {
        let framed: Vec<u8> = (0..7)
            .flat_map(|i| {
                framed_facts(&CustomerFacts {
                    customer_id: format!("c{i}"),
                    // One entry longer than 127 bytes: a two-byte length.
                    top_categories: vec!["t".repeat(if i == 3 { 300 } else { 1 })],
                    ..Default::default()
                })
            })
            .collect();
        let runs = split_framed(&framed, 3).expect("whole entries");
        assert_eq!(runs.len(), 3);
        let decoded: Vec<Vec<String>> = runs
            .iter()
            .map(|run| {
                let chunk = crate::facts_route::EncodedChunk::from_framed(run, "0.7");
                let response = StreamFactsResponse::decode(chunk.0).unwrap();
                assert_eq!(response.cursor, "0.7");
                response.facts.into_iter().map(|f| f.customer_id).collect()
            })
            .collect();
        assert_eq!(
            decoded,
            vec![vec!["c0", "c1", "c2"], vec!["c3", "c4", "c5"], vec!["c6"]]
        );
        assert!(ids_ascend(&framed, ""));
        assert!(ids_ascend(&framed, "b"));
        assert!(!ids_ascend(&framed, "c0"), "not after the page before");
        let mut swapped = Vec::new();
        for run in [runs[1], runs[0]] {
            swapped.extend_from_slice(run);
        }
        assert!(!ids_ascend(&swapped, ""));
        assert_eq!(split_framed(&[0x12, 0x00], 3), None, "not field 1");
        assert_eq!(split_framed(&[0x0A, 0x05, 0x00], 3), None, "cut short");
        assert_eq!(split_framed(&[], 3), Some(Vec::new()));
    }
}
