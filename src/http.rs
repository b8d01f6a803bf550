//! The HTTP server of `run`: `/healthz`, `/readyz`, `/metrics` (Prometheus
//! text). Binds to 127.0.0.1 unless configured otherwise. When a token is
//! configured, every endpoint except health and metrics requires
//! `Authorization: Bearer <token>` (compared in constant time).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::pipeline::Status;

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub status: Arc<Status>,
    pub metrics: Option<PrometheusHandle>,
    pub token: Option<Arc<str>>,
}

/// The router, without a socket (tests drive it with `oneshot`).
pub fn app(state: AppState) -> Router {
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text));
    let guarded = Router::new()
        .route("/v1/status", get(status_json))
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
    let lag = s
        .status
        .lag
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let assigned = s
        .status
        .assigned
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
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
