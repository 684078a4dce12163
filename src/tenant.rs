//! The tenant: whose changes a subscriber may see, as named by a signed token and as
//! recorded by the journal's triggers.

use std::fmt;
use std::sync::Arc;

/// Longest tenant id accepted from outside.
const MAX_TENANT_LEN: usize = 256;

/// A tenant id that is empty, too long or holds control characters.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a tenant id is 1 to {MAX_TENANT_LEN} bytes without control characters")]
pub struct InvalidTenant;

/// A tenant's id, as in tokens and in the journal's `tenant_id` column.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Validates a tenant id from outside (a token, the CLI).
    pub fn new(id: &str) -> Result<TenantId, InvalidTenant> {
        if id.is_empty() || id.len() > MAX_TENANT_LEN || id.chars().any(char::is_control) {
            return Err(InvalidTenant);
        }
        Ok(TenantId(id.into()))
    }

    /// A tenant id the journal recorded (already enforced non-null by the trigger).
    pub fn from_journal(id: &str) -> TenantId {
        TenantId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
