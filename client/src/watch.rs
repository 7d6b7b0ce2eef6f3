//! A watch that survives reconnects and failover.

use std::pin::Pin;
use std::task::{Context, Poll};

use seaport::{EventKind, FreeReason, Service, pb};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::Stream;

use crate::{Error, Result, SeaportClient};

/// One event of a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The service concerned (none for `Synced` and `Reset`).
    pub service: Option<Service>,
    /// The registry revision of the change or snapshot.
    pub revision: u64,
    /// For `Freed`: why the service went away (none when an update moved
    /// it out of the watched set, or from an older server).
    pub reason: Option<FreeReason>,
}

impl TryFrom<pb::WatchEvent> for Event {
    type Error = Error;

    fn try_from(e: pb::WatchEvent) -> Result<Self> {
        let kind = EventKind::from(e.kind());
        let reason = e.reason().known();
        Ok(Event {
            kind,
            service: e.service.map(Service::try_from).transpose()?,
            revision: e.revision,
            reason,
        })
    }
}

/// The events of one watch; ends only when the client closes, or the
/// server refuses it for good (the pattern, or, when reads need a client
/// certificate, the lack of one). Dropping it stops the watch.
pub struct WatchStream {
    rx: mpsc::Receiver<Result<Event>>,
    task: JoinHandle<()>,
}

impl Stream for WatchStream {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn start(client: SeaportClient, pattern: String) -> WatchStream {
    let (tx, rx) = mpsc::channel(256);
    let task = tokio::spawn(follow(client, pattern, tx));
    WatchStream { rx, task }
}

/// Keeps a Watch call open on the current server, resuming from the last
/// revision seen. Revisions are per server, so after failover to another
/// server the consumer is sent `Reset` and a fresh snapshot instead.
async fn follow(client: SeaportClient, pattern: String, tx: mpsc::Sender<Result<Event>>) {
    let mut since = 0u64;
    let mut last_server: Option<String> = None;
    loop {
        let conn = match client.conn().await {
            Ok(conn) => conn,
            Err(Error::Closed) => return,
            Err(_) => continue,
        };
        if last_server.as_ref().is_some_and(|s| *s != conn.server) {
            since = 0;
            let reset = Event {
                kind: EventKind::Reset,
                service: None,
                revision: 0,
                reason: None,
            };
            if tx.send(Ok(reset)).await.is_err() {
                return;
            }
        }
        last_server = Some(conn.server.clone());
        let request = pb::WatchRequest {
            pattern: pattern.clone(),
            namespace: client.namespace(),
            since_revision: since,
            ..Default::default()
        };
        let ended = match conn.rpc.clone().watch(request).await {
            Err(status) => Some(status),
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let event = match stream.message().await {
                        Ok(Some(event)) => event,
                        Ok(None) => break None,
                        Err(status) => break Some(status),
                    };
                    let event = match Event::try_from(event) {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    if !matches!(event.kind, EventKind::Existing | EventKind::Reset) {
                        since = event.revision;
                    }
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        };
        if let Some(status) = ended {
            match client.failure(&conn, status) {
                // A refusal the server means (a bad pattern, a certificate
                // reads need) ends the watch; asking again would not help.
                e @ Error::Status { code, .. } if crate::is_final(code) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                _ => {}
            }
        }
        if client.wait_for_new_conn(&conn).await.is_err() {
            return;
        }
    }
}
