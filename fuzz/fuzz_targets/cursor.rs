//! The cursor codec (`Last-Event-ID`, `last_event_id`): any text decodes to a cursor or
//! an error, never a panic; what decodes re-encodes to a cursor of the same meaning; and
//! every cursor the service can issue decodes back to itself (and under no other tenant,
//! journal or key). Inputs a client sends almost never carry a valid MAC: the codec's
//! structure past the MAC is exercised by the round trip of what the service issues.
#![no_main]

use changecast::tenant::TenantId;
use changecast::journal::{Cursor, CursorKey, CursorScope, PgSnapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = CursorKey::new(&[0x42; 32]).unwrap();
    let scope = CursorScope::new("fuzz-journal", key.clone());
    let tenant = TenantId::new("acme").unwrap();

    // Whatever a client sends.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cursor) = scope.decode(&tenant, text) {
            let again = scope.encode(&tenant, &cursor);
            assert_eq!(scope.decode(&tenant, &again), Ok(cursor), "{text:?}");
        }
    }

    // Whatever the service may issue: a valid snapshot built from the bytes.
    let mut words = data
        .chunks(8)
        .map(|chunk| chunk.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)));
    let (Some(id), Some(xmin), Some(span)) = (words.next(), words.next(), words.next()) else {
        return;
    };
    // Transaction ids are 64-bit epoch-extended; keep xmax within u64.
    let xmin = xmin >> 1;
    let xmax = xmin + (span >> 1);
    let mut xip: Vec<u64> = words
        .filter_map(|w| (xmax > xmin).then(|| xmin + w % (xmax - xmin)))
        .collect();
    xip.sort_unstable();
    xip.dedup();
    let seen = PgSnapshot { xmin, xmax, xip };
    let cursor = Cursor {
        id: (id >> 1) as i64,
        seen: seen.clone(),
    };
    let text = scope.encode(&tenant, &cursor);
    let back = scope
        .decode(&tenant, &text)
        .unwrap_or_else(|error| panic!("{cursor:?} encoded as {text:?} does not decode: {error}"));
    assert_eq!(back.id, cursor.id);
    if back.seen != seen {
        // Long running-transaction lists are cut, never to see more than before.
        assert!(
            back.seen.xip.len() < seen.xip.len(),
            "{cursor:?} came back as {back:?}"
        );
        assert_eq!(back.seen, seen.clone().bounded(back.seen.xip.len()));
    }
    // A cursor is tied to its tenant, journal and key.
    assert!(scope
        .decode(&TenantId::new("other").unwrap(), &text)
        .is_err());
    assert!(CursorScope::new("other-journal", key)
        .decode(&tenant, &text)
        .is_err());
    assert!(
        CursorScope::new("fuzz-journal", CursorKey::new(&[0x43; 32]).unwrap())
            .decode(&tenant, &text)
            .is_err()
    );
});
