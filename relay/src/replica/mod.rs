//! Reads from hot standbys (`--replica-url`): Postgres streaming replicas of
//! the primary, so that read capacity grows with standbys while the primary
//! only ticks, takes write checkpoints and applies `/crud`.
//!
//! - [`rotation`]: pure rules: a standby's lag in checkpoints, whether it is
//!   in rotation, which one reads go to.
//! - [`routed`]: [`RoutedStore`], the [`crate::store::Store`] that sends the
//!   sync path's reads to the chosen standby (or the primary) and everything
//!   else to the primary.
//! - [`gate`]: [`Gate`], the task that learns of checkpoints from the
//!   primary (its ticks and `NOTIFY`, which never reach a standby), polls the
//!   standbys until the one streams read from shows them, and only then
//!   announces them to the streams.
//!
//! The invariant: every checkpoint a stream is told of (or asks ops for) is
//! visible on the server that answers its reads. A standby that has replayed
//! a checkpoint's commit shows the checkpoint row and, with it, every op of
//! that checkpoint (one transaction), so a stream never sees a torn view.
//! Checkpoints only grow on a standby (also across promotion), so a
//! checkpoint seen there once stays there.

pub mod gate;
pub mod rotation;
pub mod routed;

pub use gate::Gate;
pub use routed::RoutedStore;

use crate::store::{PgStore, Store};
use crate::Error;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use tokio::sync::Notify;

/// One standby.
pub struct Member {
    /// `host:port` (or the URL's position), for logs and metric labels.
    pub name: String,
    pub url: String,
    pub store: Arc<dyn Store>,
    /// Highest checkpoint known to be visible there, from the gate's polls
    /// and from what reads returned.
    visible: AtomicU64,
}

impl Member {
    pub fn visible(&self) -> u64 {
        self.visible.load(SeqCst)
    }

    pub fn observe(&self, checkpoint: u64) {
        self.visible.fetch_max(checkpoint, SeqCst);
    }
}

/// No standby: reads go to the primary.
const PRIMARY: usize = usize::MAX;

/// The standbys of one relay and which of them its reads go to.
pub struct Replicas {
    pub members: Vec<Member>,
    target: AtomicUsize,
    /// Woken when a read on a standby failed, so the gate checks it at once.
    pub trouble: Notify,
}

impl Replicas {
    /// Pools for each URL (opened lazily). Reads start on the primary until
    /// the gate has seen a standby answer.
    pub fn new(urls: &[String], pool_size: usize) -> Result<Replicas, Error> {
        let members = urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let store: Arc<dyn Store> = Arc::new(PgStore::new(url, pool_size)?);
                Ok((name_of(url, i), url.clone(), store))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Replicas::from_stores(members))
    }

    /// Standbys as (name, url, store).
    pub fn from_stores(members: Vec<(String, String, Arc<dyn Store>)>) -> Replicas {
        Replicas {
            members: members
                .into_iter()
                .map(|(name, url, store)| Member {
                    name,
                    url,
                    store,
                    visible: AtomicU64::new(0),
                })
                .collect(),
            target: AtomicUsize::new(PRIMARY),
            trouble: Notify::new(),
        }
    }

    /// The standby reads go to now (`None`: the primary).
    pub fn target(&self) -> Option<usize> {
        let t = self.target.load(SeqCst);
        (t != PRIMARY).then_some(t)
    }

    pub(crate) fn set_target(&self, t: Option<usize>) {
        self.target.store(t.unwrap_or(PRIMARY), SeqCst);
    }

    /// The standby to ask for ops up to `checkpoint`: the target, if it is
    /// known to show that checkpoint.
    pub fn target_for(&self, checkpoint: u64) -> Option<&Member> {
        let m = self.members.get(self.target()?)?;
        (m.visible() >= checkpoint).then_some(m)
    }
}

/// `host:port` of a URL for labels, never its password; `#i` when unclear.
fn name_of(url: &str, i: usize) -> String {
    match crate::pg_tls::PgConnect::parse(url) {
        Ok(pg) => {
            let host = pg
                .config
                .get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_else(|| "localhost".into());
            let port = pg.config.get_ports().first().copied().unwrap_or(5432);
            format!("{host}:{port}")
        }
        Err(_) => format!("#{i}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hide_credentials_and_reads_start_on_the_primary() {
        let r = Replicas::new(
            &[
                "host=127.0.0.1 port=5451 user=u password=secret dbname=d".to_string(),
                "postgres://u:secret@db2.example:6000/d".to_string(),
            ],
            2,
        )
        .unwrap();
        assert_eq!(r.members[0].name, "127.0.0.1:5451");
        assert_eq!(r.members[1].name, "db2.example:6000");
        assert_eq!(r.target(), None);
        r.set_target(Some(1));
        r.members[1].observe(7);
        assert!(r.target_for(7).is_some() && r.target_for(8).is_none());
    }
}

#[cfg(test)]
mod gate_tests;
