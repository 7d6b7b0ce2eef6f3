//! The plaintext admin port: grpc.health.v1 and HTTP `/healthz` and
//! `/readyz` (GET and HEAD; any other path is 404), for Kubernetes probes,
//! which send no client certificate even when the main port demands one;
//! and `/metrics`, for Prometheus.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::pb::health_server::{Health, HealthServer};

use crate::metrics::Metrics;

/// Serves health on `listener` until `stop` flips to true. `serving` is
/// the registry's status: true answers 200, false 503.
pub async fn run<T: Health>(
    listener: TcpListener,
    health: HealthServer<T>,
    serving: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let status = move || {
        let up = *serving.borrow();
        async move {
            if up {
                (StatusCode::OK, "SERVING\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
            }
        }
    };
    let router = tonic::service::Routes::new(health)
        .into_axum_router()
        .route("/healthz", get(status.clone()))
        .route("/readyz", get(status))
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }),
        )
        // Not tonic's default (an HTTP 200 carrying UNIMPLEMENTED), so a
        // mistyped probe path fails rather than passing. A known path with
        // another method than GET or HEAD gets axum's 405.
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: use /healthz, /readyz or /metrics\n",
            )
        });
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::warn!("admin port stopped: {e}");
    }
}
