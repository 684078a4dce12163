//! The opaque cursor a subscriber resumes from: the `id` of every event.
//!
//! A cursor says: "this subscriber has received every change whose transaction the
//! snapshot `seen` sees". Resuming replays the journal rows `seen` does not see.
//! The cursor of a change is a pure function of its journal row (id, writer's xid and
//! snapshot), so a change carries the same `id` live, on replay and on any instance.
//!
//! Cursors are authenticated: a client can hold and return one, not make or alter one.
//! A cursor that does not verify (altered, truncated, another tenant's, another
//! database's or journal's, or of an older wire version) is refused before it costs a
//! database read, like any other cursor that cannot be honoured (`cursor_invalid`).
//!
//! Wire form: base64url of `version`, then LEB128 numbers `id, xmin, xmax - xmin,
//! |xip|, xip deltas`, then the first [`MAC_LEN`] bytes of an HMAC-SHA256 over the
//! journal's identity, the tenant and everything before it. Typically 36–45 characters.
//! The key ([`CursorKey`]) is kept in the database, readable by the service's role only,
//! so every instance on the database shares it without configuration.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

use super::snapshot::PgSnapshot;
use crate::tenant::TenantId;

/// Version 1 carried no MAC: such cursors cannot be verified and are refused.
const VERSION: u8 = 2;
/// Longest running-transaction list a cursor carries; see `PgSnapshot::bounded`.
const MAX_XIP: usize = 32;
/// A cursor longer than this is not ours (and would not be worth decoding).
const MAX_ENCODED_LEN: usize = 512;
/// Bytes of the MAC a cursor carries: half of SHA-256's output (RFC 2104's floor for a
/// truncated HMAC), as guessing is the only attack and each guess costs a request.
pub const MAC_LEN: usize = 16;
/// Shortest key accepted: SHA-256's output length.
pub const MIN_KEY_LEN: usize = 32;

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
    #[error(
        "the cursor was not issued by this service for this tenant and journal, or was altered"
    )]
    Malformed,
    #[error("the changes after this cursor have been pruned")]
    Expired,
}

impl CursorError {
    pub fn resync_reason(&self) -> ResyncReason {
        match self {
            CursorError::Expired => ResyncReason::CursorExpired,
            CursorError::Malformed => ResyncReason::CursorInvalid,
        }
    }
}

/// Why a subscriber must refetch its state: the `reason` of a `resync` (API.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResyncReason {
    /// The journal was pruned past the cursor.
    CursorExpired,
    /// The cursor was not issued here for this tenant, or belongs to a journal or a
    /// timeline of the database's history that is gone.
    CursorInvalid,
    /// A table of a type the subscriber follows was truncated.
    Truncated,
    /// One transaction brought the subscriber more events than its `max_txn_events`:
    /// it gets this instead of them.
    BulkChange,
    /// The journal holds a row of an event this build does not know (written by another
    /// version sharing the database): the subscribers of its type refetch.
    UnknownChange,
}

impl ResyncReason {
    pub const ALL: [ResyncReason; 5] = [
        ResyncReason::CursorExpired,
        ResyncReason::CursorInvalid,
        ResyncReason::Truncated,
        ResyncReason::BulkChange,
        ResyncReason::UnknownChange,
    ];

    /// As the wire and the metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncReason::CursorExpired => "cursor_expired",
            ResyncReason::CursorInvalid => "cursor_invalid",
            ResyncReason::Truncated => "truncated",
            ResyncReason::BulkChange => "bulk_change",
            ResyncReason::UnknownChange => "unknown_change",
        }
    }
}

/// The secret that authenticates cursors.
#[derive(Clone)]
pub struct CursorKey(Hmac<Sha256>);

/// A key shorter than [`MIN_KEY_LEN`].
#[derive(Debug, thiserror::Error)]
#[error("a cursor key needs at least {MIN_KEY_LEN} bytes, got {0}")]
pub struct ShortKey(pub usize);

impl CursorKey {
    pub fn new(secret: &[u8]) -> Result<Self, ShortKey> {
        if secret.len() < MIN_KEY_LEN {
            return Err(ShortKey(secret.len()));
        }
        let mac =
            Hmac::<Sha256>::new_from_slice(secret).expect("BUG: HMAC takes keys of any length");
        Ok(CursorKey(mac))
    }
}

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

/// The identity of a journal as cursors are bound to it (see [`CursorScope::new`]).
pub fn journal_tag(journal_id: &str) -> u32 {
    fnv1a(journal_id.as_bytes(), FNV_OFFSET)
}

/// What a cursor is bound to: this journal and one tenant, under the service's key.
#[derive(Clone, Debug)]
pub struct CursorScope {
    journal_tag: u32,
    key: CursorKey,
}

impl CursorScope {
    pub fn new(journal_id: &str, key: CursorKey) -> Self {
        CursorScope::from_tag(journal_tag(journal_id), key)
    }

    /// The journal's identity as a number, to keep in an atomic ([`CursorScope::from_tag`]).
    pub fn tag(&self) -> u32 {
        self.journal_tag
    }

    pub fn from_tag(journal_tag: u32, key: CursorKey) -> Self {
        CursorScope { journal_tag, key }
    }

    /// The MAC of `body` (a cursor's bytes before its MAC) for `tenant` in this journal.
    fn mac(&self, tenant: &TenantId, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.key.0.clone();
        mac.update(&self.journal_tag.to_be_bytes());
        // Length-prefixed: the tenant's end is never ambiguous with the body's start.
        let mut tenant_len = Vec::with_capacity(2);
        put_varint(&mut tenant_len, tenant.as_str().len() as u64);
        mac.update(&tenant_len);
        mac.update(tenant.as_str().as_bytes());
        mac.update(body);
        mac
    }

    pub fn encode(&self, tenant: &TenantId, cursor: &Cursor) -> String {
        let seen = cursor.seen.clone().bounded(MAX_XIP);
        let mut out = Vec::with_capacity(40);
        out.push(VERSION);
        put_varint(&mut out, cursor.id as u64);
        put_varint(&mut out, seen.xmin);
        put_varint(&mut out, seen.xmax - seen.xmin);
        put_varint(&mut out, seen.xip.len() as u64);
        let mut previous = seen.xmin;
        for &x in &seen.xip {
            put_varint(&mut out, x - previous);
            previous = x;
        }
        let tag = self.mac(tenant, &out).finalize().into_bytes();
        out.extend_from_slice(&tag[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The cursor `text` stands for, if this service issued it for `tenant` in this
    /// journal. The MAC is checked (in constant time) before anything else is read.
    pub fn decode(&self, tenant: &TenantId, text: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_ENCODED_LEN {
            return Err(CursorError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| CursorError::Malformed)?;
        let body_len = bytes
            .len()
            .checked_sub(MAC_LEN)
            .ok_or(CursorError::Malformed)?;
        let (body, tag) = bytes.split_at(body_len);
        if body.first() != Some(&VERSION) {
            return Err(CursorError::Malformed);
        }
        self.mac(tenant, body)
            .verify_truncated_left(tag)
            .map_err(|_| CursorError::Malformed)?;
        // From here on the bytes are the service's own: what follows guards against its
        // bugs, not against clients.
        let mut rest = &body[1..];
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

    fn key(byte: u8) -> CursorKey {
        CursorKey::new(&[byte; 32]).unwrap()
    }

    fn scope() -> CursorScope {
        CursorScope::new("journal-a", key(1))
    }

    fn cursor(id: i64, snapshot: &str) -> Cursor {
        Cursor {
            id,
            seen: snapshot.parse().unwrap(),
        }
    }

    #[test]
    fn round_trips() {
        let scope = scope();
        for c in [
            cursor(1, "10:10:"),
            cursor(123_456_789, "4000000000:4000000100:4000000001,4000000050"),
        ] {
            let text = scope.encode(&tenant("acme"), &c);
            assert!(text.len() < 70, "{text} is long");
            assert_eq!(scope.decode(&tenant("acme"), &text), Ok(c));
        }
        let typical = scope.encode(&tenant("acme"), &cursor(1_234_567, "3000000:3000002:"));
        assert!(typical.len() <= 45, "{typical} is long");
    }

    #[test]
    fn keys_shorter_than_sha256_are_refused() {
        assert!(CursorKey::new(&[7; 31]).is_err());
        assert!(CursorKey::new(&[7; 32]).is_ok());
    }

    #[test]
    fn cursors_of_another_tenant_journal_or_key_are_refused() {
        let text = scope().encode(&tenant("acme"), &cursor(7, "10:20:12"));
        assert_eq!(
            scope().decode(&tenant("globex"), &text),
            Err(CursorError::Malformed)
        );
        assert_eq!(
            CursorScope::new("journal-b", key(1)).decode(&tenant("acme"), &text),
            Err(CursorError::Malformed)
        );
        assert_eq!(
            CursorScope::new("journal-a", key(2)).decode(&tenant("acme"), &text),
            Err(CursorError::Malformed)
        );
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let scope = scope();
        let text = scope.encode(&tenant("acme"), &cursor(77_777, "5000:5010:5003,5007"));
        let bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut altered = bytes.clone();
                altered[at] ^= 1 << bit;
                assert_eq!(
                    scope.decode(&tenant("acme"), &URL_SAFE_NO_PAD.encode(&altered)),
                    Err(CursorError::Malformed),
                    "byte {at} bit {bit}"
                );
            }
        }
        // Truncated or extended encodings too.
        for len in 0..bytes.len() {
            let cut = URL_SAFE_NO_PAD.encode(&bytes[..len]);
            assert_eq!(
                scope.decode(&tenant("acme"), &cut),
                Err(CursorError::Malformed)
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let longer = URL_SAFE_NO_PAD.encode(&longer);
        assert_eq!(
            scope.decode(&tenant("acme"), &longer),
            Err(CursorError::Malformed)
        );
    }

    #[test]
    fn a_rewritten_payload_under_the_old_mac_is_refused() {
        // What a client can do without the key: claim to have seen nothing (xmin = xmax
        // = 3) and keep the MAC it was given, or make one up.
        let scope = scope();
        let text = scope.encode(&tenant("acme"), &cursor(900, "4000:4002:"));
        let bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        let mac = &bytes[bytes.len() - MAC_LEN..];
        let mut forged = vec![VERSION];
        for n in [900, 3, 0, 0] {
            put_varint(&mut forged, n);
        }
        let mut with_old_mac = forged.clone();
        with_old_mac.extend_from_slice(mac);
        let mut with_made_up_mac = forged;
        with_made_up_mac.extend_from_slice(&[0x5a; MAC_LEN]);
        for bytes in [with_old_mac, with_made_up_mac] {
            assert_eq!(
                scope.decode(&tenant("acme"), &URL_SAFE_NO_PAD.encode(bytes)),
                Err(CursorError::Malformed)
            );
        }
    }

    #[test]
    fn unauthenticated_and_garbage_cursors_are_refused() {
        let scope = scope();
        // A cursor of the first wire version (version byte, journal and tenant tags,
        // numbers; no MAC): it cannot be verified.
        let mut v1 = vec![1u8, 0, 0, 0, 1, 0, 0, 0, 2];
        v1.extend_from_slice(&[5, 10, 0, 0]);
        for garbage in [
            "",
            "42",
            "not a cursor!",
            "AAAAAAAAAAAAAAAAAAAA",
            &"A".repeat(600),
            &URL_SAFE_NO_PAD.encode(&v1),
        ] {
            assert_eq!(
                scope.decode(&tenant("acme"), garbage),
                Err(CursorError::Malformed),
                "{garbage}"
            );
        }
    }

    #[test]
    fn long_running_lists_are_bounded_without_seeing_more() {
        let scope = CursorScope::new("j", key(3));
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
