//! The web console at `/`: a playground, a key holder's account page and the admin pages,
//! as a few hand-written files compiled into the binary. No build step and nothing fetched
//! from elsewhere, so the console works offline and is the same version as the server. It
//! is a client of the public API like any other: it holds the key the user types and calls
//! `/v1/…` and `/admin/…` with it, so serving it needs no state and grants nothing.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::HttpError;

/// Name, content type and bytes of every file the console is made of.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("console/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("console/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("console/api.js"),
    ),
    (
        "playground.js",
        "text/javascript; charset=utf-8",
        include_bytes!("console/playground.js"),
    ),
    (
        "account.js",
        "text/javascript; charset=utf-8",
        include_bytes!("console/account.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_bytes!("console/chart.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_bytes!("console/admin.js"),
    ),
];

/// Each asset's entity tag: a hash of its bytes, so a browser revalidates cheaply and an
/// upgraded server's files are never mistaken for the cached ones.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|(_, _, bytes)| {
            let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            format!("\"{h:016x}\"")
        })
        .collect()
});

/// Only the server's own files and API: the console loads nothing from elsewhere, and no
/// other site may frame it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /` and `GET /console/{asset}`.
pub fn router<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(asset))
}

/// The web console's page.
#[utoipa::path(get, path = "/", tag = "console",
    responses(
        (status = 200, description = "The console's page", content_type = "text/html", body = String),
        (status = 304, description = "Unchanged since the copy the browser holds (`if-none-match`)")))]
pub async fn index(h: HeaderMap) -> Response {
    serve("index.html", &h)
}

/// One of the console's files: a script or the style sheet.
#[utoipa::path(get, path = "/console/{asset}", tag = "console",
    params(("asset" = String, Path, description = "The file's name, e.g. `app.js`")),
    responses(
        (status = 200, description = "The file (JavaScript or CSS)", content_type = "text/javascript", body = String),
        (status = 304, description = "Unchanged since the copy the browser holds (`if-none-match`)"),
        (status = 404, description = "No such file", body = tokenfab_wire::ErrorBody)))]
pub async fn asset(Path(name): Path<String>, h: HeaderMap) -> Response {
    serve(&name, &h)
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|(n, _, _)| *n == name) else {
        return HttpError::route_not_found("GET", &format!("/console/{name}")).into_response();
    };
    let (_, content_type, bytes) = ASSETS[i];
    let etag = &ETAGS[i];
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        bytes.into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated on every load (a 304 when unchanged): the files carry no version in
    // their names, and a stale script against a newer server would misbehave.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}
