//! Accept loop, connection cap, TLS handshakes and graceful shutdown, plus
//! [`run`], which wires the whole relay together from `serve` arguments.

use crate::config::ServeArgs;
use crate::listener::{Announced, Listener};
use crate::liveness::Liveness;
use crate::metrics::{GaugeGuard, Metrics};
use crate::replica::{Gate, Replicas, RoutedStore};
use crate::routes::{app, App, AppState, CloseConnection, Limits};
use crate::store::{PgStore, Store};
use crate::supervise::supervise;
use crate::ticker::Ticker;
use crate::tls::Tls;
use crate::Error;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};

/// How long open connections get to finish after shutdown starts.
const GRACE: Duration = Duration::from_secs(10);

/// Runs the relay on `listener` until `shutdown` resolves.
pub async fn run(
    args: ServeArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let (verifier, jwks_urls) = crate::auth::from_args(&args).await?;
    let metrics = Arc::new(Metrics::default());
    let primary: Arc<dyn Store> = Arc::new(PgStore::new(&args.database_url, args.db_pool_size)?);
    // What streams are told of (`cp_tx`), and what the primary announces
    // (`primary_tx`: ticks, NOTIFY). Without standbys they are one channel;
    // with them the replica gate passes a checkpoint on once the standby
    // streams read from shows it.
    let (cp_tx, cp_rx) = watch::channel(Announced::initial());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let (store, primary_tx) = if args.replica_url.is_empty() {
        (primary, cp_tx.clone())
    } else {
        let replicas = Arc::new(Replicas::new(&args.replica_url, args.db_pool_size)?);
        let (primary_tx, primary_rx) = watch::channel(Announced::initial());
        let gate = Gate {
            replicas: replicas.clone(),
            primary: primary_rx,
            published: cp_tx.clone(),
            metrics: metrics.clone(),
            max_lag: Duration::from_secs_f64(args.replica_max_lag),
        };
        let names: Vec<&str> = replicas.members.iter().map(|m| m.name.as_str()).collect();
        tracing::info!(standbys = ?names, max_lag = args.replica_max_lag, "sync reads go to hot standbys");
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(supervise(
            "replica-gate",
            metrics.clone(),
            stop_rx.clone(),
            move || gate.clone().run(stop.clone()),
        )));
        let store: Arc<dyn Store> = Arc::new(RoutedStore::new(primary, replicas, metrics.clone()));
        (store, primary_tx)
    };

    let tick_wake = args.drive_ticks.then(|| Arc::new(Notify::new()));
    let liveness = Arc::new(Liveness::new(args.drive_ticks));
    let fresh_wait = Duration::from_millis(args.freshness_wait_ms.unwrap_or(if args.drive_ticks {
        10_000
    } else {
        250
    }));
    let freshness = match &tick_wake {
        Some(wake) => crate::freshness::Freshness::Ticks {
            ticks: Arc::new(crate::freshness::Ticks::new(wake.clone())),
            wait: fresh_wait,
            announced: cp_rx.clone(),
        },
        None => crate::freshness::Freshness::Announced {
            checkpoints: cp_rx.clone(),
            wait: fresh_wait,
        },
    };
    if let (Some(wake), crate::freshness::Freshness::Ticks { ticks, .. }) = (&tick_wake, &freshness)
    {
        let ticker = Ticker {
            store: store.clone(),
            wake: wake.clone(),
            checkpoints: primary_tx.clone(),
            metrics: metrics.clone(),
            trailing: Some(crate::ticker::TRAILING),
            fallback: crate::ticker::FALLBACK,
            compact_every: (args.compact_every_ops > 0).then_some(args.compact_every_ops),
            liveness: liveness.clone(),
            ticks: ticks.clone(),
        };
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(supervise(
            "ticker",
            metrics.clone(),
            stop_rx.clone(),
            move || ticker.clone().run(stop.clone()),
        )));
    }
    let listen = Listener {
        database_url: args.database_url.clone(),
        checkpoints: primary_tx,
        tick_wake,
        store: store.clone(),
        metrics: metrics.clone(),
        liveness: liveness.clone(),
    };
    let stop = stop_rx.clone();
    tasks.push(tokio::spawn(supervise(
        "listener",
        metrics.clone(),
        stop_rx.clone(),
        move || listen.clone().run(stop.clone()),
    )));
    if let Some(keys) = jwks_urls {
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(supervise(
            "jwks",
            metrics.clone(),
            stop_rx.clone(),
            move || keys.clone().run(stop.clone()),
        )));
    }

    let state = AppState {
        verifier,
        store: store.clone(),
        checkpoints: cp_rx,
        shutdown: stop_rx.clone(),
        fanout: crate::fanout::Fanout::new(store.clone(), metrics.clone()),
        metrics,
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            max_sync_body_bytes: args.max_sync_body_bytes,
            max_ops_per_batch: args.max_ops_per_batch,
            read_timeout: Duration::from_secs(args.read_timeout_secs),
            send_timeout: Duration::from_secs(args.send_timeout_secs),
            ..Limits::default()
        },
        write_role: args.write_role.clone(),
        cors: crate::routes::cors::layer(&args.cors_origins)?,
        compression: args.compression,
        liveness,
        freshness,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = Arc::new(Tls::load(cert, key)?);
            tasks.push(tokio::spawn(reload_on_hangup(
                tls.clone(),
                state.metrics.clone(),
                stop_rx.clone(),
            )));
            Some(tls)
        }
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %listener.local_addr().map_err(|e| Error::Config(e.to_string()))?, scheme, "outpost-relay listening");
    serve(
        listener,
        app(state),
        args.max_connections,
        tls,
        shutdown,
        &stop_tx,
    )
    .await;
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// A client connection, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Serves `app` until `shutdown` resolves, then stops accepting, tells
/// streams (and background tasks) to end through `stop`, and waits, bounded,
/// for connections to finish. With `tls`, every connection is HTTPS.
pub async fn serve(
    listener: TcpListener,
    app: App,
    max_connections: usize,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
    stop: &watch::Sender<bool>,
) {
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let read_timeout = app.state().limits.read_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper applies no header timeout at all: a client sending
    // its headers a byte at a time (slowloris) would hold a connection forever.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let builder = Arc::new(builder);
    // Over the cap: one 503, then the connection closes.
    let mut refuse = auto::Builder::new(TokioExecutor::new());
    refuse
        .http1()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let refuse = Arc::new(refuse);
    let metrics = app.state().metrics.clone();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let metrics = metrics.clone();
                let app = app.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _open = GaugeGuard::new(&metrics.connections_open);
                    let Some(io) = handshake(stream, tls.as_deref(), read_timeout, peer).await
                    else {
                        return;
                    };
                    let close = Arc::new(Notify::new());
                    let service = {
                        let close = close.clone();
                        hyper::service::service_fn(
                            move |mut req: http::Request<hyper::body::Incoming>| {
                                req.extensions_mut().insert(CloseConnection(close.clone()));
                                hyper::service::Service::call(&app, req)
                            },
                        )
                    };
                    let conn = builder.serve_connection(TokioIo::new(io), service);
                    let conn = watcher.watch(conn.into_owned());
                    tokio::select! {
                        r = conn => {
                            if let Err(e) = r {
                                tracing::debug!(%peer, error = %e, "connection ended with error");
                            }
                        }
                        _ = close.notified() => tracing::debug!(%peer, "connection closed: its client stopped reading"),
                    }
                    drop(permit);
                });
            }
            Err(_) => {
                metrics.connections_rejected.inc();
                let refuse = refuse.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let Some(io) = handshake(stream, tls.as_deref(), read_timeout, peer).await
                    else {
                        return;
                    };
                    let conn = refuse.serve_connection(
                        TokioIo::new(io),
                        hyper::service::service_fn(|_req| async {
                            let mut res =
                                Error::Unavailable("too many connections".into()).into_response();
                            res.headers_mut().insert(
                                http::header::CONNECTION,
                                http::HeaderValue::from_static("close"),
                            );
                            Ok::<_, std::convert::Infallible>(res)
                        }),
                    );
                    let conn = watcher.watch(conn.into_owned());
                    // h2 has no keep-alive switch: bound the connection instead.
                    let _ = tokio::time::timeout(read_timeout, conn).await;
                });
            }
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting for open connections");
    let _ = stop.send(true);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(GRACE) => tracing::warn!("grace period over; dropping remaining connections"),
    }
}

/// Waits (bounded) for the client's first byte, then completes the TLS
/// handshake when `tls` is set. `None`: the client sent nothing in time or
/// the handshake failed; the connection is dropped.
async fn handshake(
    stream: TcpStream,
    tls: Option<&Tls>,
    read_timeout: Duration,
    peer: std::net::SocketAddr,
) -> Option<Box<dyn Io>> {
    // hyper's header timeout starts at the first byte: a client that
    // connects and sends nothing would hold a connection slot forever.
    let mut first = [0u8; 1];
    match tokio::time::timeout(read_timeout, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => {
            tracing::debug!(%peer, "connection sent nothing in time; closed");
            return None;
        }
    }
    let Some(tls) = tls else {
        return Some(Box::new(stream));
    };
    match tokio::time::timeout(read_timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(s)) => Some(Box::new(s)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake not done in time; closed");
            None
        }
    }
}

/// Reloads the certificate on every SIGHUP until `stop`. The handler is
/// installed before this returns, so a SIGHUP sent once the relay serves is
/// never the default action (which ends the process).
fn reload_on_hangup(
    tls: Arc<Tls>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let mut hup = match hup {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS certificates will not reload");
                    return;
                }
            };
            loop {
                tokio::select! {
                    got = hup.recv() => {
                        if got.is_none() {
                            return;
                        }
                        match tls.reload() {
                            Ok(()) => {
                                metrics.tls_reloads.inc();
                                tracing::info!("TLS certificate reloaded");
                            }
                            Err(e) => {
                                metrics.tls_reload_errors.inc();
                                tracing::error!(error = %e, "TLS certificate reload failed; keeping the previous one");
                            }
                        }
                    }
                    _ = crate::stopped(&mut stop) => return,
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (tls, metrics);
            crate::stopped(&mut stop).await;
        }
    }
}
