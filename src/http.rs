//! The HTTP server of `run`: `/healthz`, `/readyz`, `/metrics` (Prometheus
//! text), `/v1/status`, `/v1/rotations`, `/v1/rotations/{key_id}`,
//! `/v1/keys/{key_id}/usage` and `/reports/rotations` (an HTML page). Binds
//! to 127.0.0.1 unless configured otherwise. When a token is configured,
//! every endpoint except health and metrics requires
//! `Authorization: Bearer <token>` (compared in constant time).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};

use crate::pipeline::Status;
use crate::report::{render, ReportSource};
#[cfg(test)]
use crate::report::{RotationReport, UsageView};

/// `[http]`: the HTTP server of `run` (metrics, health, reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address; "" disables the server. Default "127.0.0.1:9898".
    pub listen: String,
    /// Bearer token required by every endpoint except /healthz, /readyz and
    /// /metrics. Default: none (or the REPLAYGUARD_HTTP_TOKEN environment variable).
    pub token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9898".into(),
            token: None,
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "http.listen {:?} is not an address like 127.0.0.1:9898",
                self.listen
            ));
        }
        Ok(())
    }
}

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub status: Arc<Status>,
    pub metrics: Option<PrometheusHandle>,
    pub token: Option<Arc<str>>,
    /// Report data; when `None`, what the running pipeline publishes in `status`.
    pub reports: Option<Arc<dyn ReportSource>>,
}

impl AppState {
    fn source(&self) -> Option<Arc<dyn ReportSource>> {
        self.reports
            .clone()
            .or_else(|| self.status.reports.get().cloned())
    }
}

/// The router, without a socket (tests drive it with `oneshot`).
pub fn app(state: AppState) -> Router {
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text));
    let guarded = Router::new()
        .route("/v1/status", get(status_json))
        .route("/v1/rotations", get(rotations_json))
        .route("/v1/rotations/{key_id}", get(rotation_json))
        .route("/v1/keys/{key_id}/usage", get(usage_json))
        .route("/reports/rotations", get(rotations_html))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    open.merge(guarded).with_state(state)
}

/// Whether `given` equals `want`, in time independent of where they differ.
pub fn token_matches(given: &[u8], want: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    given.len() == want.len() && bool::from(given.ct_eq(want))
}

async fn require_token(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(want) = &s.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !token_matches(given.as_bytes(), want.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "missing or wrong bearer token\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

async fn healthz(State(s): State<AppState>) -> Response {
    match s.status.healthy() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.status.ready.load(std::sync::atomic::Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: restoring state or joining the group\n",
        )
            .into_response()
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    match &s.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "metrics are not recorded in this process\n",
        )
            .into_response(),
    }
}

async fn status_json(State(s): State<AppState>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    fn read<T: Clone>(m: &std::sync::Mutex<T>) -> T {
        m.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    let (lag, assigned) = (read(&s.status.lag), read(&s.status.assigned));
    axum::Json(serde_json::json!({
        "assigned": assigned,
        "ready": s.status.ready.load(Relaxed),
        "healthy": s.status.healthy().is_ok(),
        "events": s.status.events.load(Relaxed),
        "alerts": s.status.alerts.load(Relaxed),
        "lag": lag,
    }))
    .into_response()
}

fn no_reports() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "reports are not available in this process\n",
    )
        .into_response()
}

async fn rotations_json(State(s): State<AppState>) -> Response {
    let Some(r) = s.source() else {
        return no_reports();
    };
    match tokio::task::spawn_blocking(move || r.rotations()).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn rotation_json(State(s): State<AppState>, Path(key): Path<String>) -> Response {
    let Some(r) = s.source() else {
        return no_reports();
    };
    match tokio::task::spawn_blocking(move || r.rotations().into_iter().find(|x| x.key_id == key))
        .await
    {
        Ok(Some(v)) => axum::Json(v).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "that key is not in rotation\n").into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn usage_json(State(s): State<AppState>, Path(key): Path<String>) -> Response {
    let Some(r) = s.source() else {
        return no_reports();
    };
    match tokio::task::spawn_blocking(move || r.usage(&key)).await {
        Ok(Some(v)) => axum::Json(v).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            "no usage recorded for that key here\n",
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn rotations_html(State(s): State<AppState>) -> Response {
    let Some(r) = s.source() else {
        return no_reports();
    };
    match tokio::task::spawn_blocking(move || render::html(&r.rotations())).await {
        Ok(page) => axum::response::Html(page).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    fn state(token: Option<&str>) -> AppState {
        AppState {
            status: Arc::new(Status::default()),
            metrics: None,
            token: token.map(Arc::from),
            reports: Some(Arc::new(Fixed::sample())),
        }
    }

    /// Reports from a fixed scan-like state: one key in rotation.
    struct Fixed {
        snap: crate::report::Snapshot,
    }

    impl Fixed {
        fn sample() -> Self {
            use crate::detect::usage::{observe, KeyUsage, UsageConfig};
            use crate::schema::{AccessEvent, KeyState, LifecycleEvent};
            use std::borrow::Cow;
            let t0 = 1_795_824_000_000;
            let mut lifecycle = crate::detect::LifecycleTable::default();
            lifecycle.upsert(LifecycleEvent {
                key_id: "old".into(),
                state: KeyState::Rotating,
                at: t0,
                successor: Some("new".into()),
                grace_until: None,
            });
            let mut usage = std::collections::HashMap::new();
            for i in 0..600i64 {
                let key = if i % 3 == 0 { "old" } else { "new" };
                let e = AccessEvent {
                    event_id: Cow::Owned(format!("e{i}")),
                    received_at: t0 + i * 1000,
                    key_id: Some(Cow::Borrowed(key)),
                    nonce: None,
                    client_ts: Some(t0 + i * 1000),
                    client_ip: Cow::Borrowed("10.0.0.7"),
                    method: Cow::Borrowed("GET"),
                    path: Cow::Borrowed("/"),
                    status: 200,
                    user_agent: None,
                    client_id: Some(Cow::Borrowed("<script>bot</script>")),
                    signature: None,
                };
                let u = usage
                    .entry(key.to_string())
                    .or_insert_with(|| KeyUsage::new(e.received_at));
                observe(&UsageConfig::default(), u, &e, &mut vec![]);
            }
            Fixed {
                snap: crate::report::Snapshot {
                    lifecycle,
                    usage,
                    now: Some(t0 + 599_000),
                },
            }
        }
    }

    impl ReportSource for Fixed {
        fn rotations(&self) -> Vec<RotationReport> {
            self.snap.rotations(&Default::default())
        }
        fn usage(&self, key_id: &str) -> Option<UsageView> {
            self.snap
                .usage
                .get(key_id)
                .map(|u| UsageView::new(key_id, u, self.snap.now.unwrap()))
        }
    }

    async fn body(app: Router, path: &str) -> (StatusCode, String) {
        let r = app
            .oneshot(Request::builder().uri(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let b = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&b).into_owned())
    }

    #[tokio::test]
    async fn rotation_and_usage_endpoints() {
        let a = app(state(None));
        let (st, b) = body(a.clone(), "/v1/rotations").await;
        assert_eq!(st, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v[0]["key_id"], "old");
        assert_eq!(v[0]["verdict"], "NOT_READY");
        assert_eq!(v[0]["old_key"]["since_rotation"], 200);
        let (st, b) = body(a.clone(), "/v1/rotations/old").await;
        assert_eq!(st, StatusCode::OK);
        assert!(b.contains("\"successor\":\"new\""));
        assert_eq!(
            body(a.clone(), "/v1/rotations/nope").await.0,
            StatusCode::NOT_FOUND
        );
        let (st, b) = body(a.clone(), "/v1/keys/new/usage").await;
        assert_eq!(st, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["requests_total"], 400);
        assert_eq!(
            body(a.clone(), "/v1/keys/zzz/usage").await.0,
            StatusCode::NOT_FOUND
        );
        let (st, page) = body(a, "/reports/rotations").await;
        assert_eq!(st, StatusCode::OK);
        assert!(page.contains("<svg class=\"chart\""));
        assert!(page.contains("class=\"straggler\""));
        assert!(
            page.contains("&lt;script&gt;bot&lt;/script&gt;"),
            "client names are escaped"
        );
        assert!(!page.contains("<script>bot"));
    }

    #[tokio::test]
    async fn report_endpoints_need_the_token() {
        let a = app(state(Some("t0k")));
        for p in [
            "/v1/rotations",
            "/v1/rotations/old",
            "/v1/keys/old/usage",
            "/reports/rotations",
        ] {
            assert_eq!(
                get(a.clone(), p, None).await,
                StatusCode::UNAUTHORIZED,
                "{p}"
            );
            assert_eq!(
                get(a.clone(), p, Some("Bearer t0k")).await,
                StatusCode::OK,
                "{p}"
            );
        }
    }

    async fn get(app: Router, path: &str, auth: Option<&str>) -> StatusCode {
        let mut r = Request::builder().uri(path);
        if let Some(a) = auth {
            r = r.header(header::AUTHORIZATION, a);
        }
        app.oneshot(r.body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn health_and_readiness() {
        let s = state(None);
        let a = app(s.clone());
        assert_eq!(get(a.clone(), "/healthz", None).await, StatusCode::OK);
        assert_eq!(
            get(a.clone(), "/readyz", None).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        s.status
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(get(a.clone(), "/readyz", None).await, StatusCode::OK);
        *s.status.unhealthy.lock().unwrap() = Some("disk full".into());
        assert_eq!(
            get(a, "/healthz", None).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn token_guards_everything_but_health_and_metrics() {
        let a = app(state(Some("s3cret")));
        assert_eq!(
            get(a.clone(), "/v1/status", None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(a.clone(), "/v1/status", Some("Bearer nope")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(a.clone(), "/v1/status", Some("Bearer s3cret")).await,
            StatusCode::OK
        );
        assert_eq!(get(a.clone(), "/healthz", None).await, StatusCode::OK);
        assert_eq!(get(a, "/metrics", None).await, StatusCode::NOT_FOUND);
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abc", b"abd"));
        assert!(!token_matches(b"ab", b"abc"));
    }
}
