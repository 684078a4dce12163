//! Bearer tokens (`Authorization`, `access_token`): any text is verified or refused,
//! never a panic; whatever passes has the three parts of a signed JWT (the corpus holds
//! valid tokens for this secret, so mutations of signed tokens are tried too).
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
        // An unsigned (`alg: none`, two-part) token must never pass.
        let header = token.split('.').next().unwrap_or_default();
        assert!(
            token.split('.').count() == 3 && !header.is_empty(),
            "accepted a token without three parts: {token:?}"
        );
    }
});
