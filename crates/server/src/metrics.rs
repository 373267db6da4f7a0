//! `GET /metrics`: every crate's metrics (engine, platform, upstream, HTTP) in Prometheus'
//! text format.
//!
//! The crates record through the `metrics` facade; this module installs the process's
//! recorder, a Prometheus exporter without its own listener: the API's router serves the
//! page, behind the admin key when one is set. The recorder must be installed before the
//! engines start, since they register their handles once, at start ([`install`]).

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::HttpError;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Seconds: from a millisecond to ten minutes (a long generation's end-to-end time).
const SECONDS_BUCKETS: [f64; 20] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
    20.0, 40.0, 80.0, 600.0,
];

/// Counts per engine step: sequences in a batch, tokens in a step (a prompt chunk is up to
/// 512 tokens per sequence).
const COUNT_BUCKETS: [f64; 14] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];

/// How often histograms' samples are folded in when nobody scrapes (they are kept until
/// then: every token's latency is one sample).
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder as the process's recorder, once; later calls do
/// nothing. False when another recorder was installed first (an embedder's own), in which
/// case `/metrics` says so.
pub fn install() -> bool {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .ok()?;
            for name in tokenfab_engine::metrics::STEP_HISTOGRAMS {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full(name.into()), &COUNT_BUCKETS)
                    .ok()?;
            }
            let handle = match builder.install_recorder() {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(%e, "metrics are not exported: another recorder is installed");
                    return None;
                }
            };
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("tokenfab-metrics".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(%e, "cannot start the metrics upkeep thread");
            }
            Some(handle)
        })
        .is_some()
}

/// The page Prometheus scrapes: every metric in Prometheus' text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("admin_key" = [])),
    responses(
        (status = 200, description = "Prometheus' text format, version 0.0.4", content_type = "text/plain", body = String),
        (status = 401, description = "The admin key is configured and was not sent", body = tokenfab_wire::ErrorBody),
        (status = 404, description = "The process has no Prometheus recorder", body = tokenfab_wire::ErrorBody)))]
pub async fn page(_req: Request) -> Response {
    match HANDLE.get().and_then(Option::as_ref) {
        Some(h) => {
            let mut resp = h.render().into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        None => {
            let mut e = HttpError::bad_request(
                None,
                "metrics are not exported: the process has no Prometheus recorder",
            );
            e.status = StatusCode::NOT_FOUND;
            e.body.code = Some("metrics_off".into());
            e.into_response()
        }
    }
}
