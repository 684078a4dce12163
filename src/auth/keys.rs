//! Public keys that identity-provider tokens are verified with, read from PEM or from a
//! JWKS document. Each key is bound to exactly one algorithm, decided by the key itself
//! (its type and curve), never by a token: a token whose `alg` differs is refused.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

/// The algorithms public keys verify. HS256 is the shared secret's alone; a JWKS `oct`
/// key is never used (it would let whoever reads the JWKS mint tokens).
pub const PUBLIC_KEY_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Most keys kept from one JWKS document or PEM file; identity providers publish two or
/// three. A token without `kid` is tried against each key of its algorithm, so this also
/// bounds the work one token can cause.
pub const MAX_KEYS: usize = 16;

/// RSA keys shorter than this are refused: 1024-bit moduli are within reach of factoring.
const MIN_RSA_BITS: usize = 2048;

/// One verification key.
#[derive(Clone)]
pub struct PublicKey {
    /// The JWKS `kid`; PEM keys have none.
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub decoding: DecodingKey,
}

/// The keys a token may be verified with, as loaded or fetched together.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<PublicKey>,
}

/// What [`KeySet::candidates`] found for a token's header.
pub enum Lookup<'a> {
    /// Keys to try, all of the token's algorithm (more than one only without `kid`).
    Keys(Vec<&'a PublicKey>),
    /// The token names a `kid` the set does not hold.
    UnknownKid,
    /// The named key exists but verifies another algorithm.
    WrongAlgorithm(Algorithm),
    /// No key of the token's algorithm at all.
    NoKeyForAlgorithm,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key named `kid` is in the set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }

    /// The keys a token with this header may be verified with. A `kid` selects a key by
    /// name when the set names its keys (a JWKS); PEM keys have no names, so a `kid` is
    /// not looked at there. Without a `kid`, every key of the token's algorithm is tried.
    pub fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Lookup<'_> {
        let named = self.keys.iter().any(|key| key.kid.is_some());
        if let (Some(kid), true) = (kid, named) {
            return match self.keys.iter().find(|key| key.kid.as_deref() == Some(kid)) {
                None => Lookup::UnknownKid,
                Some(key) if key.alg != alg => Lookup::WrongAlgorithm(key.alg),
                Some(key) => Lookup::Keys(vec![key]),
            };
        }
        let keys: Vec<&PublicKey> = self.keys.iter().filter(|key| key.alg == alg).collect();
        if keys.is_empty() {
            Lookup::NoKeyForAlgorithm
        } else {
            Lookup::Keys(keys)
        }
    }

    /// Every public key in a PEM text (`PUBLIC KEY`, `RSA PUBLIC KEY` or `CERTIFICATE`
    /// blocks; several may follow each other, e.g. the current and the next key).
    pub fn from_pem(text: &str) -> Result<KeySet, String> {
        let blocks = pem_blocks(text)?;
        if blocks.is_empty() {
            return Err("no PEM block (`-----BEGIN PUBLIC KEY-----` ...) found".into());
        }
        if blocks.len() > MAX_KEYS {
            return Err(format!(
                "{} PEM blocks; at most {MAX_KEYS} keys are accepted",
                blocks.len()
            ));
        }
        let mut keys = Vec::with_capacity(blocks.len());
        for (index, block) in blocks.iter().enumerate() {
            let key = pem_key(block).map_err(|why| format!("PEM block {}: {why}", index + 1))?;
            keys.push(key);
        }
        Ok(KeySet { keys })
    }

    /// The usable signature keys of a JWKS document (`{"keys": [...]}`), and a note for
    /// each key left out (encryption keys, other algorithms, malformed entries): an
    /// identity provider's set often holds keys that are not for us.
    pub fn from_jwks(document: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(document)
            .map_err(|error| format!("not a JWKS document (`{{\"keys\": [...]}}`): {error}"))?;
        let mut keys: Vec<PublicKey> = Vec::new();
        let mut skipped = Vec::new();
        for (index, entry) in document.keys.into_iter().enumerate() {
            let key = serde_json::from_value::<Jwk>(entry)
                .map_err(|error| format!("not a JWK: {error}"))
                .and_then(|jwk| jwk_key(&jwk));
            match key {
                Ok(key) if keys.iter().any(|known| known.kid == key.kid) => skipped.push(format!(
                    "key {index}: `kid` {:?} appears twice; the first is kept",
                    key.kid
                )),
                Ok(_) if keys.len() == MAX_KEYS => {
                    skipped.push(format!("key {index}: more than {MAX_KEYS} keys"))
                }
                Ok(key) => keys.push(key),
                Err(why) => skipped.push(format!("key {index}: {why}")),
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "no usable signature key (RS256, ES256 or EdDSA, each with a `kid`){}",
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!(": {}", skipped.join("; "))
                }
            ));
        }
        Ok((KeySet { keys }, skipped))
    }
}

/// The (label, base64 body) of each PEM block.
fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let label_end = after
            .find("-----")
            .ok_or("a `-----BEGIN` line is not closed")?;
        let label = after[..label_end].to_owned();
        let body_and_rest = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let end = body_and_rest
            .find(&end_marker)
            .ok_or_else(|| format!("no `{end_marker}` line"))?;
        let body: String = body_and_rest[..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| format!("the `{label}` block is not valid base64"))?;
        blocks.push((label, der));
        rest = &body_and_rest[end + end_marker.len()..];
    }
    Ok(blocks)
}

fn pem_key((label, der): &(String, Vec<u8>)) -> Result<PublicKey, String> {
    if label.contains("PRIVATE") {
        return Err(format!(
            "a private key (`{label}`); give the public key only \
             (`openssl pkey -in key.pem -pubout`)"
        ));
    }
    if !matches!(
        label.as_str(),
        "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE"
    ) {
        return Err(format!(
            "`{label}` is not a public key (expected `PUBLIC KEY`, `RSA PUBLIC KEY` or \
             `CERTIFICATE`)"
        ));
    }
    // jsonwebtoken's PEM reader tells the key type apart by its object identifiers; a
    // block is re-armoured for it so one malformed block names itself.
    let armoured = format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    );
    let pem = armoured.as_bytes();
    let key = if let Ok(decoding) = DecodingKey::from_rsa_pem(pem) {
        check_rsa_der(&decoding)?;
        PublicKey {
            kid: None,
            alg: Algorithm::RS256,
            decoding,
        }
    } else if let Ok(decoding) = DecodingKey::from_ec_pem(pem) {
        check_p256(&decoding).map_err(|why| format!("an EC key {why}"))?;
        PublicKey {
            kid: None,
            alg: Algorithm::ES256,
            decoding,
        }
    } else if let Ok(decoding) = DecodingKey::from_ed_pem(pem) {
        check_ed25519(&decoding)?;
        PublicKey {
            kid: None,
            alg: Algorithm::EdDSA,
            decoding,
        }
    } else {
        return Err(format!(
            "`{label}` holds no RSA, P-256 or Ed25519 public key that can be read"
        ));
    };
    Ok(key)
}

fn jwk_key(jwk: &Jwk) -> Result<PublicKey, String> {
    let kid = jwk.common.key_id.clone().ok_or("no `kid`")?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err(format!("`{kid}` is an encryption key (`use: enc`)"));
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(format!(
                "`{kid}` is a symmetric (`oct`) key; shared secrets are never taken from a JWKS"
            ))
        }
        _ => return Err(format!("`{kid}` is of a key type or curve not supported")),
    };
    // A key that names its algorithm is used for that one only, and only if it is the
    // one its type implies (an RSA key marked PS256 verifies no RS256 token).
    if let Some(named) = jwk.common.key_algorithm {
        let implied = match alg {
            Algorithm::RS256 => KeyAlgorithm::RS256,
            Algorithm::ES256 => KeyAlgorithm::ES256,
            _ => KeyAlgorithm::EdDSA,
        };
        if named != implied {
            return Err(format!("`{kid}` is for {named:?}, which is not accepted"));
        }
    }
    let decoding =
        DecodingKey::from_jwk(jwk).map_err(|error| format!("`{kid}` cannot be read: {error}"))?;
    match alg {
        Algorithm::RS256 => match &jwk.algorithm {
            AlgorithmParameters::RSA(rsa) => check_rsa_modulus(
                &URL_SAFE_NO_PAD
                    .decode(rsa.n.trim_end_matches('='))
                    .map_err(|_| format!("`{kid}`: `n` is not base64url"))?,
            ),
            _ => Ok(()),
        },
        Algorithm::ES256 => check_p256(&decoding),
        _ => check_ed25519(&decoding),
    }
    .map_err(|why| format!("`{kid}`: {why}"))?;
    Ok(PublicKey {
        kid: Some(kid),
        alg,
        decoding,
    })
}

fn key_bytes(decoding: &DecodingKey) -> &[u8] {
    match decoding.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => bytes,
        DecodingKeyKind::RsaModulusExponent { n, .. } => n,
    }
}

fn check_rsa_modulus(modulus: &[u8]) -> Result<(), String> {
    let significant = modulus.iter().skip_while(|byte| **byte == 0).count();
    if significant * 8 < MIN_RSA_BITS {
        return Err(format!(
            "an RSA key of about {} bits; at least {MIN_RSA_BITS} are required",
            significant * 8
        ));
    }
    Ok(())
}

/// The size of a PKCS#1 RSA public key's modulus: its DER is a SEQUENCE of two INTEGERs,
/// and the first one's length is all that is needed.
fn check_rsa_der(decoding: &DecodingKey) -> Result<(), String> {
    fn length(der: &[u8]) -> Option<(usize, usize)> {
        // (content length, header length) of the element at the start of `der`.
        let first = *der.get(1)?;
        if first < 0x80 {
            return Some((first as usize, 2));
        }
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 {
            return None;
        }
        let mut len = 0usize;
        for byte in der.get(2..2 + count)? {
            len = (len << 8) | *byte as usize;
        }
        Some((len, 2 + count))
    }
    let der = key_bytes(decoding);
    let modulus = (|| {
        let (_, sequence_header) = length(der)?;
        let integer = der.get(sequence_header..)?;
        let (len, header) = length(integer)?;
        integer.get(header..header + len)
    })()
    .ok_or("an RSA key that cannot be read")?;
    check_rsa_modulus(modulus)
}

fn check_p256(decoding: &DecodingKey) -> Result<(), String> {
    match key_bytes(decoding) {
        [0x04, rest @ ..] if rest.len() == 64 => Ok(()),
        [0x02 | 0x03, rest @ ..] if rest.len() == 32 => Ok(()),
        _ => Err("on a curve other than P-256 (only ES256 is accepted)".into()),
    }
}

fn check_ed25519(decoding: &DecodingKey) -> Result<(), String> {
    match key_bytes(decoding).len() {
        32 => Ok(()),
        _ => Err("an Ed25519 key must be 32 bytes".into()),
    }
}
