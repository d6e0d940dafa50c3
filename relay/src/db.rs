//! The one place that opens Postgres connections: [`pool`] for queries
//! ([`crate::store::PgStore`]) and [`connect`] for the single LISTEN
//! connection ([`crate::listener`]), both through [`crate::pg_tls`] so that
//! libpq's `sslmode`/`sslrootcert` hold for every connection.

use crate::pg_tls::PgConnect;
use crate::Error;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use std::time::Duration;
use tokio_postgres::AsyncMessage;

/// What the server sends outside of query results (notifications, notices),
/// until the connection ends. It must be polled for the connection to make
/// progress at all.
pub type Messages = BoxStream<'static, Result<AsyncMessage, tokio_postgres::Error>>;

/// A pool of at most `size` connections to `database_url`, opened lazily:
/// building it does not fail when Postgres is down.
pub fn pool(database_url: &str, size: usize) -> Result<Pool, Error> {
    let pg = PgConnect::parse(database_url)?;
    let mgr = Manager::from_config(
        pg.config,
        pg.tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| Error::Config(format!("cannot build pool: {e}")))
}

/// One connection outside the pool, with its [`Messages`].
pub async fn connect(database_url: &str) -> Result<(tokio_postgres::Client, Messages), Error> {
    let (client, mut connection) = PgConnect::parse(database_url)?.connect().await?;
    let messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx)).boxed();
    Ok((client, messages))
}
