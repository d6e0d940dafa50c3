//! The router: [`app`] builds a hyper `Service` from shared state, with no
//! socket involved, so tests drive it directly. One module per endpoint,
//! plus [`cors`] (the layer in front of the client endpoints) and
//! `stream_body` (the sync stream's response body, compressed or not).

pub mod cors;
mod crud;
mod health;
mod page_read;
mod request_body;
mod schema;
mod stream_body;
mod sync_stream;
mod write_checkpoint;

use crate::auth::{Claims, Verifier};
use crate::error::json_response;
use crate::listener::Announced;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::Error;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tower::{Layer, ServiceExt};
use tower_http::cors::{Cors, CorsLayer};

use request_body::{check_content_length, read_json, read_json_streamed};

pub type ResBody = BoxBody<Bytes, Infallible>;

/// Bounds that keep one client from costing the relay unbounded memory or time.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// `/sync/stream` bodies: a resume lists every bucket the client holds.
    pub max_sync_body_bytes: usize,
    /// Rows per `bucket_ops` query; a data line never holds more.
    pub max_ops_per_batch: u32,
    /// Interval of `token_expires_in` keepalive lines.
    pub keepalive: Duration,
    /// Lines buffered per stream before a slow client stalls its producer.
    pub stream_buffer: usize,
    /// Entries per `POST /crud` batch; more is 413.
    pub max_crud_entries: usize,
    /// Streams advance from one shared read of what changed (see
    /// [`crate::fanout`]) once at least this many are open; below, each asks
    /// `sync_checkpoint` itself (the shared read scans every bucket's state).
    pub shared_changes_min_streams: u64,
    /// Time a client gets to send a request body (408 beyond); headers get the
    /// same bound from the HTTP/1 server (see [`crate::server::serve`]).
    pub read_timeout: Duration,
    /// A stream whose client takes no line for this long is closed.
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 1 << 20,
            max_sync_body_bytes: 32 << 20,
            max_ops_per_batch: 1000,
            keepalive: Duration::from_secs(20),
            stream_buffer: 8,
            max_crud_entries: 1000,
            shared_changes_min_streams: 2,
            read_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
        }
    }
}

pub struct AppState {
    pub verifier: Verifier,
    pub store: Arc<dyn Store>,
    /// Latest announced checkpoint; every stream holds a clone of this receiver.
    pub checkpoints: watch::Receiver<Announced>,
    /// Turns true when the relay shuts down; streams end cleanly on it.
    pub shutdown: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    /// Reads shared by all streams (changes per checkpoint, pages of ops).
    pub fanout: crate::fanout::Fanout,
    pub limits: Limits,
    /// Role for `POST /crud`; `None` disables the endpoint.
    pub write_role: Option<String>,
    /// CORS in front of [`cors::CLIENT_PATHS`] (see [`cors::layer`]).
    pub cors: CorsLayer,
    /// Compress `/sync/stream` when the client accepts it.
    pub compression: bool,
    /// Background tasks' state, for `/health`.
    pub liveness: Arc<crate::liveness::Liveness>,
    /// What a new stream waits for before its first checkpoint.
    pub freshness: crate::freshness::Freshness,
}

/// Put in each request's extensions by the server: notifying it closes the
/// request's connection (a stalled stream's, whose queued bytes would keep
/// it open otherwise).
#[derive(Clone)]
pub struct CloseConnection(pub Arc<tokio::sync::Notify>);

/// The relay's HTTP service.
#[derive(Clone)]
pub struct App {
    state: Arc<AppState>,
    cors: Cors<Router>,
}

/// Builds the router over `state`.
pub fn app(state: AppState) -> App {
    let state = Arc::new(state);
    App {
        cors: state.cors.clone().layer(Router {
            state: state.clone(),
        }),
        state,
    }
}

impl App {
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }
}

impl<B> hyper::service::Service<Request<B>> for App
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<ResBody>, Infallible>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        if cors::CLIENT_PATHS.contains(&req.uri().path()) {
            Box::pin(self.cors.clone().oneshot(req))
        } else {
            Router {
                state: self.state.clone(),
            }
            .handle(req)
        }
    }
}

/// [`route`] as a tower service, for the CORS layer to wrap.
#[derive(Clone)]
struct Router {
    state: Arc<AppState>,
}

impl Router {
    fn handle<B>(
        &self,
        req: Request<B>,
    ) -> BoxFuture<'static, Result<Response<ResBody>, Infallible>>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let state = self.state.clone();
        Box::pin(async move { Ok(route(state, req).await.unwrap_or_else(Error::into_response)) })
    }
}

impl<B> tower::Service<Request<B>> for Router
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<ResBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.handle(req)
    }
}

async fn route<B>(state: Arc<AppState>, req: Request<B>) -> Result<Response<ResBody>, Error>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let allow = |m: Method| {
        if method == m {
            Ok(())
        } else {
            Err(Error::MethodNotAllowed)
        }
    };
    match req.uri().path() {
        "/sync/stream" => {
            allow(Method::POST)?;
            sync_stream::handle(state, req).await
        }
        "/write-checkpoint2.json" => {
            allow(Method::GET)?;
            write_checkpoint::handle(state, req).await
        }
        "/sync/checkpoint-request" => {
            allow(Method::POST)?;
            write_checkpoint::checkpoint_request(state, req).await
        }
        "/crud" => {
            allow(Method::POST)?;
            crud::handle(state, req).await
        }
        "/health" => {
            allow(Method::GET)?;
            health::health(state).await
        }
        "/metrics" => {
            allow(Method::GET)?;
            Ok(health::metrics(&state))
        }
        "/schema" => {
            allow(Method::GET)?;
            schema::handle(state, req).await
        }
        _ => Err(Error::NotFound),
    }
}

/// The request's claims. Returns a future that holds no borrow of `req`
/// (request bodies need not be `Sync`), since verifying may fetch keys.
fn authenticate<'a, B>(
    state: &'a AppState,
    req: &Request<B>,
) -> impl std::future::Future<Output = Result<Claims, Error>> + Send + 'a {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| Error::Unauthorized("authorization header is not ASCII".into()))
        })
        .transpose();
    async move { state.verifier.verify_header(header?.as_deref()).await }
}

fn ok_json<T: serde::Serialize>(value: &T) -> Response<ResBody> {
    json_response(StatusCode::OK, value)
}

#[cfg(test)]
mod tests;
