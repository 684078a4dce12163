//! The opaque cursor a subscriber resumes from: the `id` of every event.
//!
//! A cursor says: "this subscriber has received every change whose transaction the
//! snapshot `seen` sees". Resuming replays the journal rows `seen` does not see.
//! The cursor of a change is a pure function of its journal row (id, writer's xid and
//! snapshot), so a change carries the same `id` live, on replay and on any instance.
//!
//! Wire form: base64url of `version, journal tag, tenant tag` then LEB128 numbers
//! `id, xmin, xmax - xmin, |xip|, xip deltas`. Typically 20–30 characters.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::PgSnapshot;
use crate::auth::TenantId;

const VERSION: u8 = 1;
/// Longest running-transaction list a cursor carries; see `PgSnapshot::bounded`.
const MAX_XIP: usize = 32;
/// A cursor longer than this is not ours (and would not be worth decoding).
const MAX_ENCODED_LEN: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Journal row id of the change (0 for a snapshot cursor): keeps ids unique.
    pub id: i64,
    /// Every transaction visible here has been delivered to the holder.
    pub seen: PgSnapshot,
}

impl Cursor {
    /// "Everything `seen` sees": names no change (id 0).
    pub fn of_snapshot(seen: PgSnapshot) -> Self {
        Cursor { id: 0, seen }
    }
}

/// Why a cursor cannot be honoured; becomes the `resync` reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CursorError {
    #[error("the cursor is not one of ours")]
    Malformed,
    #[error("the cursor was issued by another database")]
    ForeignJournal,
    #[error("the cursor belongs to another tenant")]
    ForeignTenant,
    #[error("the changes after this cursor have been pruned")]
    Expired,
}

impl CursorError {
    pub fn resync_reason(&self) -> &'static str {
        match self {
            CursorError::Expired => "cursor_expired",
            CursorError::Malformed | CursorError::ForeignJournal | CursorError::ForeignTenant => {
                "cursor_invalid"
            }
        }
    }
}

/// What a cursor is bound to: this journal and one tenant.
#[derive(Clone, Copy, Debug)]
pub struct CursorScope {
    journal_tag: u32,
}

impl CursorScope {
    pub fn new(journal_id: &str) -> Self {
        CursorScope {
            journal_tag: fnv1a(journal_id.as_bytes(), FNV_OFFSET),
        }
    }

    /// The scope as a number, to keep in an atomic ([`CursorScope::from_tag`]).
    pub fn tag(&self) -> u32 {
        self.journal_tag
    }

    pub fn from_tag(journal_tag: u32) -> Self {
        CursorScope { journal_tag }
    }

    fn tenant_tag(&self, tenant: &TenantId) -> u32 {
        fnv1a(tenant.as_str().as_bytes(), self.journal_tag)
    }

    pub fn encode(&self, tenant: &TenantId, cursor: &Cursor) -> String {
        let seen = cursor.seen.clone().bounded(MAX_XIP);
        let mut out = Vec::with_capacity(24);
        out.push(VERSION);
        out.extend_from_slice(&self.journal_tag.to_be_bytes());
        out.extend_from_slice(&self.tenant_tag(tenant).to_be_bytes());
        put_varint(&mut out, cursor.id as u64);
        put_varint(&mut out, seen.xmin);
        put_varint(&mut out, seen.xmax - seen.xmin);
        put_varint(&mut out, seen.xip.len() as u64);
        let mut previous = seen.xmin;
        for &x in &seen.xip {
            put_varint(&mut out, x - previous);
            previous = x;
        }
        URL_SAFE_NO_PAD.encode(out)
    }

    pub fn decode(&self, tenant: &TenantId, text: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_ENCODED_LEN {
            return Err(CursorError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| CursorError::Malformed)?;
        let (header, mut rest) = bytes.split_at_checked(9).ok_or(CursorError::Malformed)?;
        if header[0] != VERSION {
            return Err(CursorError::Malformed);
        }
        let tag =
            |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().expect("BUG: 4 bytes"));
        let id = i64::try_from(take_varint(&mut rest)?).map_err(|_| CursorError::Malformed)?;
        let xmin = take_varint(&mut rest)?;
        let xmax = xmin
            .checked_add(take_varint(&mut rest)?)
            .ok_or(CursorError::Malformed)?;
        let count = take_varint(&mut rest)?;
        if count > MAX_XIP as u64 {
            return Err(CursorError::Malformed);
        }
        let mut xip = Vec::with_capacity(count as usize);
        let mut previous = xmin;
        for _ in 0..count {
            previous = previous
                .checked_add(take_varint(&mut rest)?)
                .ok_or(CursorError::Malformed)?;
            xip.push(previous);
        }
        if !rest.is_empty() {
            return Err(CursorError::Malformed);
        }
        let seen = PgSnapshot { xmin, xmax, xip };
        // Round-trip through the text form: the one validity check, shared with parsing.
        let seen: PgSnapshot = seen
            .to_string()
            .parse()
            .map_err(|_| CursorError::Malformed)?;
        // Checked after the structure, so garbage is "malformed" rather than "foreign".
        if tag(1) != self.journal_tag {
            return Err(CursorError::ForeignJournal);
        }
        if tag(5) != self.tenant_tag(tenant) {
            return Err(CursorError::ForeignTenant);
        }
        Ok(Cursor { id, seen })
    }
}

const FNV_OFFSET: u32 = 0x811c_9dc5;

fn fnv1a(bytes: &[u8], seed: u32) -> u32 {
    bytes.iter().fold(seed, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(input: &mut &[u8]) -> Result<u64, CursorError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first().ok_or(CursorError::Malformed)?;
        *input = rest;
        value |= u64::from(byte & 0x7f)
            .checked_shl(shift)
            .ok_or(CursorError::Malformed)?;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(CursorError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    fn cursor(id: i64, snapshot: &str) -> Cursor {
        Cursor {
            id,
            seen: snapshot.parse().unwrap(),
        }
    }

    #[test]
    fn round_trips() {
        let scope = CursorScope::new("journal-a");
        for c in [
            cursor(1, "10:10:"),
            cursor(123_456_789, "4000000000:4000000100:4000000001,4000000050"),
        ] {
            let text = scope.encode(&tenant("acme"), &c);
            assert!(text.len() < 60, "{text} is long");
            assert_eq!(scope.decode(&tenant("acme"), &text), Ok(c));
        }
    }

    #[test]
    fn foreign_and_malformed_cursors_are_recognised() {
        let scope = CursorScope::new("journal-a");
        let text = scope.encode(&tenant("acme"), &cursor(7, "10:20:12"));
        assert_eq!(
            scope.decode(&tenant("globex"), &text),
            Err(CursorError::ForeignTenant)
        );
        assert_eq!(
            CursorScope::new("journal-b").decode(&tenant("acme"), &text),
            Err(CursorError::ForeignJournal)
        );
        for garbage in [
            "",
            "42",
            "not a cursor!",
            "AAAAAAAAAAAAAAAAAAAA",
            &"A".repeat(600),
        ] {
            assert_eq!(
                scope.decode(&tenant("acme"), garbage),
                Err(CursorError::Malformed),
                "{garbage}"
            );
        }
        // Truncated or extended encodings are malformed too.
        assert_eq!(
            scope.decode(&tenant("acme"), &text[..text.len() - 2]),
            Err(CursorError::Malformed)
        );
    }

    #[test]
    fn long_running_lists_are_bounded_without_seeing_more() {
        let scope = CursorScope::new("j");
        let xip: Vec<String> = (101..140).map(|x| x.to_string()).collect();
        let big = cursor(5, &format!("100:200:{}", xip.join(",")));
        let back = scope
            .decode(&tenant("t"), &scope.encode(&tenant("t"), &big))
            .unwrap();
        for x in 0..250 {
            assert!(!back.seen.sees(x) || big.seen.sees(x));
        }
    }
}
