use anyhow::Context;
use clap::Parser;
use outpost_relay::config::{Cli, Command};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Token(t) => {
            // A token no relay would accept is no use: same minimum as `serve`.
            outpost_relay::auth::keys::secret_key(&t.jwt_secret)?;
            if t.ttl > outpost_relay::auth::MAX_LIFETIME_SECS as u64 {
                anyhow::bail!(
                    "--ttl must be at most {} seconds",
                    outpost_relay::auth::MAX_LIFETIME_SECS
                );
            }
            let token = outpost_relay::auth::dev_token(
                &t.jwt_secret,
                &t.sub,
                t.ttl,
                t.aud.first().map(String::as_str),
            )?;
            println!("{token}");
            Ok(())
        }
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .init();
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            outpost_relay::server::run(args, listener, shutdown_signal()).await?;
            Ok(())
        }
    }
}

/// Resolves on ctrl-c or SIGTERM (what container runtimes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}
