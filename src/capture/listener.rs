//! The one dedicated LISTEN connection. Pooled connections cannot LISTEN: their driver
//! drops notifications. This one is driven by `poll_message`, turns every notification
//! into a coalesced wake-up, and says so explicitly when the connection is lost.

use std::future::poll_fn;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;

/// The channel the capture trigger notifies (lowercase: LISTEN folds case, pg_notify does not).
pub const CHANNEL: &str = "changecast";

pub struct ListenConnection {
    /// For queries on the same connection (the tailer reads the journal here).
    pub client: Client,
    /// Signalled once per batch of notifications: "the journal has news".
    pub wake: Arc<Notify>,
    /// Cancelled when the connection is gone; reconnect, never poll it again.
    pub lost: CancellationToken,
}

pub async fn connect(
    config: &tokio_postgres::Config,
) -> Result<ListenConnection, tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let wake = Arc::new(Notify::new());
    let lost = CancellationToken::new();
    let (driver_wake, driver_lost) = (wake.clone(), lost.clone());
    tokio::spawn(async move {
        // However this ends, a panic included, the tailer must learn the connection is
        // gone (and reconnect) rather than wait on it.
        let _lost = driver_lost.drop_guard();
        // Never block in here: queries on `client` make progress only while this polls.
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => driver_wake.notify_one(),
                Some(Ok(AsyncMessage::Notice(notice))) => {
                    tracing::debug!(?notice, "notice on listener")
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::warn!(?error, "listener connection failed");
                    break;
                }
                None => break,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    Ok(ListenConnection { client, wake, lost })
}
