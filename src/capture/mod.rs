//! Capture: finding what committed, and publishing it into the hub.
//!
//! A capture source learns that the journal has news, reads it in commit order and
//! hands it to the hub a page at a time, each page with the boundary it moves the hub
//! to ([`publish::Publisher`]): its one output. It also decides how hard to look —
//! waiting for wake-ups, or draining a busy journal without them.
//!
//! - [`tailer`]: the source today. It follows the journal over the LISTEN connection
//!   ([`listener`]), reconnecting with backoff.
//! - `publish`: a batch, page by page, with the checks that keep the hub's boundary
//!   continuous (ids going backwards, the journal's identity, pruning).
//! - `pace`: when to drain, when to wait, how soon to poll (pure, tested on a clock).
//! - [`doorbell`]: whether writers NOTIFY at all, and the queue on the NOTIFY lock.
//! - [`standby`]: reading the journal from a hot standby, once it has replayed what the
//!   primary had written when the batch began.
//!
//! Another source (logical decoding, a hot standby's journal) is another file here
//! that feeds a [`publish::Publisher`]; the hub and everything after it stay as they are.

mod connection;
pub mod doorbell;
pub mod listener;
mod pace;
pub mod publish;
pub mod standby;
pub mod tailer;

pub use publish::Publisher;
pub use tailer::Tailer;
