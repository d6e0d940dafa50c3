//! `ps_stream_subscriptions`: the SQL side of [`crate::streams`]. The rules
//! (what is requested, what expired, what a checkpoint changes) are the pure
//! functions there; these only read and write rows.

use super::Store;
use crate::error::Result;
use crate::streams::{
    outdated, reconcile, LocalSubscription, Reconcile, ServerInfo, StreamKey, SubscribeOptions,
};
use outpost_protocol::StreamSubscription;
use rusqlite::{params, OptionalExtension};
use std::collections::{BTreeMap, BTreeSet};

const COLUMNS: &str = "id, stream_name, local_params, active, is_default, local_priority, ttl, \
                       expires_at, last_active_at, last_synced_at";

impl Store {
    /// Every subscription row, in the order they were first made.
    pub fn stream_subscriptions(&self) -> Result<Vec<LocalSubscription>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM ps_stream_subscriptions ORDER BY id"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok(LocalSubscription {
                id: r.get(0)?,
                key: StreamKey {
                    name: r.get(1)?,
                    params: r.get(2)?,
                },
                active: r.get(3)?,
                is_default: r.get(4)?,
                priority: r.get(5)?,
                ttl: r.get(6)?,
                expires_at: r.get(7)?,
                last_active_at: r.get(8)?,
                last_synced_at: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Subscribes (or subscribes again): the TTL is the latest given, the
    /// priority override the highest asked for, and the expiry runs from now.
    pub fn subscribe_stream(
        &self,
        key: &StreamKey,
        options: &SubscribeOptions,
        now: i64,
    ) -> Result<()> {
        let ttl = options.ttl_secs();
        self.conn.execute(
            "INSERT INTO ps_stream_subscriptions(stream_name, local_params, local_priority, ttl, expires_at, last_active_at)
             VALUES (?1, ?2, ?3, ?4, ?5 + ?4 * 1000, ?5)
             ON CONFLICT(stream_name, local_params) DO UPDATE SET
               local_priority = CASE WHEN ?3 IS NULL THEN local_priority
                                     WHEN local_priority IS NULL THEN ?3
                                     ELSE min(?3, local_priority) END,
               ttl = ?4, expires_at = ?5 + ?4 * 1000, last_active_at = ?5",
            params![key.name, key.params, options.priority, ttl, now],
        )?;
        Ok(())
    }

    /// The last handle of `key` is gone (or, for held keys, time passes):
    /// its TTL runs from `now`.
    pub fn touch_stream(&self, key: &StreamKey, now: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE ps_stream_subscriptions SET expires_at = ?3 + ttl * 1000, last_active_at = ?3
             WHERE stream_name = ?1 AND local_params = ?2 AND ttl IS NOT NULL",
            params![key.name, key.params, now],
        )?;
        Ok(())
    }

    /// Drops the app's subscription at once (PowerSync's `unsubscribeAll`):
    /// it leaves the next request whatever its TTL.
    pub fn unsubscribe_stream(&self, key: &StreamKey) -> Result<()> {
        self.conn.execute(
            "UPDATE ps_stream_subscriptions SET ttl = NULL, expires_at = NULL
             WHERE stream_name = ?1 AND local_params = ?2",
            params![key.name, key.params],
        )?;
        Ok(())
    }

    /// Deletes what expired (see [`outdated`]) and returns the subscriptions a
    /// request carries now.
    pub fn requested_streams(
        &mut self,
        held: &BTreeSet<StreamKey>,
        now: i64,
    ) -> Result<Vec<StreamSubscription>> {
        let tx = self.conn.transaction()?;
        for key in held {
            tx.execute(
                "UPDATE ps_stream_subscriptions SET expires_at = ?3 + ttl * 1000, last_active_at = ?3
                 WHERE stream_name = ?1 AND local_params = ?2 AND ttl IS NOT NULL",
                params![key.name, key.params, now],
            )?;
        }
        tx.commit()?;
        let rows = self.stream_subscriptions()?;
        self.delete_subscriptions(&outdated(&rows, held, now))?;
        let rows = self.stream_subscriptions()?;
        Ok(crate::streams::requested(&rows, held, now))
    }

    /// Records what a checkpoint said (see [`reconcile`]).
    pub fn reconcile_streams(
        &mut self,
        view: &BTreeMap<StreamKey, ServerInfo>,
        listed: &BTreeSet<String>,
    ) -> Result<()> {
        let rows = self.stream_subscriptions()?;
        let Reconcile {
            updates,
            create_defaults,
            delete,
        } = reconcile(&rows, view, listed);
        let tx = self.conn.transaction()?;
        {
            let mut upd = tx.prepare(
                "UPDATE ps_stream_subscriptions SET active = ?2, is_default = ?3 WHERE id = ?1",
            )?;
            for (id, active, default) in updates {
                upd.execute(params![id, active, default])?;
            }
            let mut ins = tx.prepare(
                "INSERT OR IGNORE INTO ps_stream_subscriptions(stream_name, local_params, active, is_default)
                 VALUES (?1, ?2, 1, 1)",
            )?;
            for k in create_defaults {
                ins.execute(params![k.name, k.params])?;
            }
            let mut del = tx.prepare("DELETE FROM ps_stream_subscriptions WHERE id = ?1")?;
            for id in delete {
                del.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Sets `last_synced_at` of these rows.
    pub fn mark_streams_synced(&mut self, ids: &[i64], now: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        for id in ids {
            tx.execute(
                "UPDATE ps_stream_subscriptions SET last_synced_at = ?2 WHERE id = ?1",
                params![id, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// One row by key, if any.
    pub fn stream_subscription(&self, key: &StreamKey) -> Result<Option<LocalSubscription>> {
        let id: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM ps_stream_subscriptions WHERE stream_name = ?1 AND local_params = ?2",
                params![key.name, key.params],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match id {
            None => None,
            Some(id) => self
                .stream_subscriptions()?
                .into_iter()
                .find(|r| r.id == id),
        })
    }

    fn delete_subscriptions(&mut self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        for id in ids {
            tx.execute("DELETE FROM ps_stream_subscriptions WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{SchemaMode, Store};
    use crate::streams::{StreamKey, SubscribeOptions};
    use serde_json::json;
    use std::collections::BTreeSet;
    use std::time::Duration;

    #[test]
    fn subscriptions_persist_and_expire() {
        let dir = std::env::temp_dir().join(format!("outpost-subs-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let key = StreamKey::new("list_todos", Some(&json!({"list_id": "a"})));
        {
            let s = Store::open(&dir, SchemaMode::Inferred).unwrap();
            s.subscribe_stream(
                &key,
                &SubscribeOptions::default().ttl(Duration::from_secs(10)),
                1_000,
            )
            .unwrap();
            s.subscribe_stream(
                &key,
                &SubscribeOptions::default()
                    .priority(1)
                    .ttl(Duration::from_secs(10)),
                2_000,
            )
            .unwrap();
            s.subscribe_stream(
                &key,
                &SubscribeOptions::default().ttl(Duration::from_secs(10)),
                3_000,
            )
            .unwrap();
            let r = &s.stream_subscriptions().unwrap()[0];
            assert_eq!(
                (r.priority, r.ttl, r.expires_at),
                (Some(1), Some(10), Some(13_000))
            );
            s.touch_stream(&key, 5_000).unwrap();
        }
        // Reopened: still there, requested until it expires.
        let mut s = Store::open(&dir, SchemaMode::Inferred).unwrap();
        let none = BTreeSet::new();
        let subs = s.requested_streams(&none, 14_999).unwrap();
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].override_priority, Some(1));
        assert_eq!(subs[0].parameters, Some(json!({"list_id": "a"})));
        // Held, it is extended instead of expiring.
        let held = BTreeSet::from([key.clone()]);
        assert_eq!(s.requested_streams(&held, 20_000).unwrap().len(), 1);
        assert_eq!(
            s.stream_subscription(&key).unwrap().unwrap().expires_at,
            Some(30_000)
        );
        assert!(s.requested_streams(&none, 30_000).unwrap().is_empty());
        assert!(
            s.stream_subscriptions().unwrap().is_empty(),
            "expired rows go"
        );
        // unsubscribe_all drops it at once.
        s.subscribe_stream(&key, &SubscribeOptions::default(), 0)
            .unwrap();
        s.unsubscribe_stream(&key).unwrap();
        assert!(s.requested_streams(&none, 1).unwrap().is_empty());
        drop(s);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", dir.display()));
        }
    }
}
