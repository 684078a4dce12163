//! What a subscription hands its transport, and what became of an entry handed over.

use crate::journal::ResyncReason;
use crate::wire::Delivery;

/// What a transport writes.
#[derive(Debug)]
pub enum Outbound {
    /// A row change or an application event, as this subscriber receives it.
    Event(Delivery),
    /// The client must refetch its state; the stream continues live from `cursor`, which
    /// replaces the client's last event id (so its next reconnect does not resync again).
    /// After a resync marker of a type the subscriber follows (a truncation, a row of an
    /// unknown event), `cursor` passes everything published, or is the marker's own (see
    /// `Subscription::cursor_past_published`).
    /// (Boxed: a rare item, and every idle subscriber's queue holds room for 32 items.)
    Resync(Box<Resync>),
    /// The token expired: the last item before the stream ends.
    AuthExpired,
}

/// See [`Outbound::Resync`].
#[derive(Debug)]
pub struct Resync {
    pub reason: ResyncReason,
    pub cursor: String,
}

/// What became of one entry handed to the subscriber.
pub(super) enum Delivered {
    Sent,
    /// Not of the subscriber's selection.
    Filtered,
    /// The transport is gone, or the service stops, or the token expired.
    Gone,
}
