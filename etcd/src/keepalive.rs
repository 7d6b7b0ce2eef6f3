//! One keep-alive stream for all the leases this server holds: etcd's
//! LeaseKeepAlive takes any lease on one stream, so a thousand sessions
//! cost one stream, not a thousand. etcd-client's keeper holds one lease
//! per stream, so this speaks the RPC itself; its two messages are
//! written out here rather than generated.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::EtcdStore;

/// etcdserverpb.LeaseKeepAliveRequest.
#[derive(Clone, PartialEq, prost::Message)]
struct KeepAliveRequest {
    #[prost(int64, tag = "1")]
    id: i64,
}

/// etcdserverpb.LeaseKeepAliveResponse.
#[derive(Clone, PartialEq, prost::Message)]
struct KeepAliveResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    id: i64,
    /// 0 when etcd no longer knows the lease.
    #[prost(int64, tag = "3")]
    ttl: i64,
}

/// etcdserverpb.ResponseHeader, its revision only.
#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(int64, tag = "3")]
    revision: i64,
}

/// A channel to the members for the keep-alive stream.
pub(crate) fn channel(
    endpoints: &[String],
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, String> {
    let endpoints = endpoints
        .iter()
        .map(|url| {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| format!("etcd endpoint {}: {e}", seaport::quote(url)))?
                .connect_timeout(Duration::from_secs(2));
            match &tls {
                Some(tls) => endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| format!("etcd TLS: {e}")),
                None => Ok(endpoint),
            }
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Channel::balance_list(endpoints.into_iter()))
}

/// Sends a keep-alive for every lease pinged, over one stream, opened
/// again whenever it breaks.
pub(crate) async fn keep(store: Arc<EtcdStore>, channel: Channel) {
    let path = PathAndQuery::from_static("/etcdserverpb.Lease/LeaseKeepAlive");
    loop {
        let (tx, rx) = tokio::sync::mpsc::channel::<KeepAliveRequest>(1024);
        // etcd answers the call's headers with its first keep-alive, so
        // the requests must flow while the call is being opened.
        let forwarder = tokio::spawn(forward(store.clone(), tx));
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        let opened = async {
            grpc.ready().await.map_err(|e| e.to_string())?;
            let codec = tonic_prost::ProstCodec::<KeepAliveRequest, KeepAliveResponse>::default();
            let request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            grpc.streaming(request, path.clone(), codec)
                .await
                .map(|r| r.into_inner())
                .map_err(|e| e.to_string())
        };
        match opened.await {
            Ok(mut answers) => {
                while let Some(answer) = answers.next().await {
                    match answer {
                        Ok(kept) if kept.ttl <= 0 => {
                            tracing::debug!(
                                lease = kept.id,
                                "etcd no longer knows a lease it was asked to keep"
                            );
                            store.observer.keep_alive_failed();
                        }
                        Ok(kept) => {
                            let revision = kept.header.map_or(0, |h| h.revision);
                            store.observer.revision(revision as u64);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "the keep-alive stream broke; opening another");
                            store.observer.keep_alive_failed();
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot open the keep-alive stream; retrying");
                store.observer.keep_alive_failed();
            }
        }
        forwarder.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Feeds the stream the leases pinged since the last round, each once.
async fn forward(store: Arc<EtcdStore>, tx: tokio::sync::mpsc::Sender<KeepAliveRequest>) {
    loop {
        store.wake_keeper.notified().await;
        let mut leases =
            std::mem::take(&mut *store.pinged.lock().unwrap_or_else(|e| e.into_inner()));
        leases.sort_unstable();
        leases.dedup();
        for id in leases {
            if tx.send(KeepAliveRequest { id }).await.is_err() {
                return;
            }
        }
    }
}
