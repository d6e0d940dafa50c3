//! Accept loop, connection cap and graceful shutdown, plus [`run`], which
//! wires the whole relay together from `serve` arguments.

use crate::config::ServeArgs;
use crate::listener::{Announced, Listener};
use crate::metrics::{GaugeGuard, Metrics};
use crate::routes::{app, App, AppState, Limits};
use crate::store::{PgStore, Store};
use crate::ticker::Ticker;
use crate::Error;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
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
    let store: Arc<dyn Store> = Arc::new(PgStore::new(&args.database_url, args.db_pool_size)?);
    let metrics = Arc::new(Metrics::default());
    let (cp_tx, cp_rx) = watch::channel(Announced::initial());
    let (stop_tx, stop_rx) = watch::channel(false);

    let tick_wake = args.drive_ticks.then(|| Arc::new(Notify::new()));
    let mut tasks = Vec::new();
    if let Some(wake) = &tick_wake {
        let ticker = Ticker {
            store: store.clone(),
            wake: wake.clone(),
            checkpoints: cp_tx.clone(),
            metrics: metrics.clone(),
            trailing: Some(crate::ticker::TRAILING),
            fallback: crate::ticker::FALLBACK,
            compact_every: (args.compact_every_ops > 0).then_some(args.compact_every_ops),
        };
        tasks.push(tokio::spawn(ticker.run(stop_rx.clone())));
    }
    let listen = Listener {
        database_url: args.database_url.clone(),
        checkpoints: cp_tx,
        tick_wake,
        store: store.clone(),
        metrics: metrics.clone(),
    };
    tasks.push(tokio::spawn(listen.run(stop_rx.clone())));
    if let Some(keys) = jwks_urls {
        tasks.push(tokio::spawn(keys.run(stop_rx.clone())));
    }

    let state = AppState {
        verifier,
        store: store.clone(),
        checkpoints: cp_rx,
        shutdown: stop_rx,
        fanout: crate::fanout::Fanout::new(store.clone(), metrics.clone()),
        metrics,
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            max_ops_per_batch: args.max_ops_per_batch,
            read_timeout: Duration::from_secs(args.read_timeout_secs),
            ..Limits::default()
        },
        write_role: args.write_role.clone(),
    };
    tracing::info!(addr = %listener.local_addr().map_err(|e| Error::Config(e.to_string()))?, "outpost-relay listening");
    serve(
        listener,
        app(state),
        args.max_connections,
        shutdown,
        &stop_tx,
    )
    .await;
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Serves `app` until `shutdown` resolves, then stops accepting, tells
/// streams (and background tasks) to end through `stop`, and waits, bounded,
/// for connections to finish.
pub async fn serve(
    listener: TcpListener,
    app: App,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
    stop: &watch::Sender<bool>,
) {
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper applies no header timeout at all: a client sending
    // its headers a byte at a time (slowloris) would hold a connection forever.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(app.state().limits.read_timeout);
    let read_timeout = app.state().limits.read_timeout;
    let builder = Arc::new(builder);
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
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let metrics = metrics.clone();
                let app = app.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _open = GaugeGuard::new(&metrics.connections_open);
                    // hyper's header timeout starts at the first byte: a client
                    // that connects and sends nothing would hold a connection
                    // slot forever. Give it the same read timeout.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(read_timeout, stream.peek(&mut first)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => {
                            tracing::debug!(%peer, "connection sent nothing in time; closed");
                            return;
                        }
                    }
                    let conn = builder.serve_connection(TokioIo::new(stream), app);
                    let conn = watcher.watch(conn.into_owned());
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with error");
                    }
                    drop(permit);
                });
            }
            Err(_) => {
                metrics.connections_rejected.fetch_add(1, Relaxed);
                let conn = builder.serve_connection(
                    TokioIo::new(stream),
                    hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(
                            Error::Unavailable("too many connections".into()).into_response(),
                        )
                    }),
                );
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
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
