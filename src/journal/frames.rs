//! Slots for an entry's wire forms. `crate::wire` renders them; the entry only keeps
//! them, so each form is rendered once and shared by every subscriber.

use std::sync::OnceLock;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// An entry as both transports write it (rendered by `crate::wire`).
#[derive(Debug)]
pub struct Frame {
    /// The JSON object: a WebSocket text frame as is.
    pub json: Utf8Bytes,
    /// The whole SSE event, `id:`, `event:` and `data:` lines.
    pub sse: Bytes,
}

/// The wire forms of one entry (up to three: see `crate::wire`), each rendered on
/// first use and then shared by every subscriber.
#[derive(Debug, Default)]
pub struct Frames([OnceLock<Frame>; 3]);

impl Frames {
    pub fn slot(&self, index: usize) -> &OnceLock<Frame> {
        &self.0[index]
    }
}
