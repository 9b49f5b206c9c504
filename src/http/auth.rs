//! Who may call the API, and how often: bearer API keys with a scope each, compared in
//! constant time and never logged, and a per-key rate limit (governor).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::configuration::{ApiKey, ApiSettings, Scope};

/// Checks keys and rates; cheap to clone.
#[derive(Clone)]
pub struct Gatekeeper {
    inner: Arc<Inner>,
}

struct Inner {
    keys: Vec<ApiKey>,
    /// No keys configured in a development run: every request is let in.
    open: bool,
    /// Keyed by the index of the key in `keys`.
    limiter: DefaultKeyedRateLimiter<usize>,
    clock: DefaultClock,
}

impl Gatekeeper {
    /// Refuses to build without keys unless this is a development run.
    pub fn new(settings: &ApiSettings) -> anyhow::Result<Self> {
        let open = settings.keys.is_empty();
        if open && !settings.development {
            anyhow::bail!(
                "no API keys configured: set WALLET_API_KEYS (or WALLET_DEVELOPMENT=true for a development run)"
            );
        }
        if open {
            tracing::warn!("development run without API keys: authentication is off");
        }
        let rate = NonZeroU32::new(settings.rate_per_second.max(1)).expect("at least 1");
        let burst = NonZeroU32::new(settings.burst.max(1)).expect("at least 1");
        Ok(Self {
            inner: Arc::new(Inner {
                keys: settings.keys.clone(),
                open,
                limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
                clock: DefaultClock::default(),
            }),
        })
    }

    /// The index and scope of the key the request carries.
    fn authenticate(&self, headers: &HeaderMap) -> Result<(usize, Scope), ApiError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every key is compared, so the time taken says nothing about which matched.
        let mut found = None;
        for (index, key) in self.inner.keys.iter().enumerate() {
            if bool::from(key.sha256.ct_eq(&digest)) {
                found = Some((index, key.scope));
            }
        }
        found.ok_or(ApiError::Unauthorized)
    }

    fn check_rate(&self, key: usize) -> Result<(), ApiError> {
        self.inner.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.inner.clock.now());
            ApiError::RateLimited(wait.max(Duration::from_secs(1)))
        })
    }
}

/// Who a request was let in as, for [`require_scope`].
#[derive(Clone, Copy, Debug)]
enum Access {
    /// A development run without keys: every route is open.
    Open,
    Key(Scope),
}

/// Middleware on `/api/v1`: 401 without a known key, 429 over the key's rate. Nothing
/// runs (so nothing is applied) when it refuses. Routes that need a particular scope
/// add [`require_scope`].
pub async fn require_key(
    State(gatekeeper): State<Gatekeeper>,
    mut request: Request,
    next: Next,
) -> Response {
    if gatekeeper.inner.open {
        request.extensions_mut().insert(Access::Open);
        return next.run(request).await;
    }
    let (key, scope) = match gatekeeper.authenticate(request.headers()) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = gatekeeper.check_rate(key) {
        return e.into_response();
    }
    request.extensions_mut().insert(Access::Key(scope));
    next.run(request).await
}

/// Route layer: 403 unless the request's key has `needed` scope. Fails closed: a
/// request that did not pass [`require_key`] is refused.
pub async fn require_scope(State(needed): State<Scope>, request: Request, next: Next) -> Response {
    match request.extensions().get::<Access>() {
        Some(Access::Open) => next.run(request).await,
        Some(Access::Key(scope)) if *scope == needed => next.run(request).await,
        Some(Access::Key(_)) => ApiError::Forbidden.into_response(),
        None => ApiError::Unauthorized.into_response(),
    }
}
