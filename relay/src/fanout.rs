//! Work shared by all streams of one process, so that a new checkpoint costs
//! a few queries per process rather than queries per connection.
//!
//! - [`Fanout::changes_since`]: one [`Changes`] read per (checkpoint a stream
//!   is at), single-flight: the first stream to ask runs the query, the
//!   others at the same checkpoint wait for and share its answer. Streams
//!   derive their next view from it ([`crate::sync::apply_changes`]) and only
//!   fall back to `sync_checkpoint` when that is not sound.
//! - [`Fanout::bucket_ops`]: pages of ops keyed by the exact request
//!   (buckets, afters, checkpoint, page size), single-flight as well: every
//!   stream that holds a changed shared bucket asks for the same page.
//!
//! Both caches are small and bounded; a miss only costs a query, never
//! correctness, because each entry is exactly what the database answered
//! for that key (ops at or below a published checkpoint never change,
//! except by compaction, which keeps checksums).

use crate::metrics::Metrics;
use crate::store::{Changes, OpRow, Store};
use crate::Error;
use outpost_protocol::OpId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// Entries kept per cache; the oldest checkpoints go first.
const MAX_CHANGES: usize = 16;
const MAX_PAGES: usize = 64;

type ChangesCell = Arc<OnceCell<Option<Arc<Changes>>>>;
type PageCell = Arc<OnceCell<Arc<Vec<OpRow>>>>;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct PageKey {
    buckets: Vec<String>,
    afters: Vec<OpId>,
    checkpoint: OpId,
    max_ops: u32,
}

pub struct Fanout {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    changes: Mutex<HashMap<OpId, ChangesCell>>,
    pages: Mutex<HashMap<PageKey, PageCell>>,
}

impl Fanout {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Fanout {
        Fanout {
            store,
            metrics,
            changes: Mutex::default(),
            pages: Mutex::default(),
        }
    }

    /// What changed after `since`, as of a checkpoint of at least
    /// `at_least` when possible (an answer read before `at_least` was
    /// announced is replaced once). `None`: the store cannot say.
    pub async fn changes_since(
        &self,
        since: OpId,
        at_least: OpId,
    ) -> Result<Option<Arc<Changes>>, Error> {
        let mut answer = None;
        for _ in 0..2 {
            let cell = {
                let mut map = self.changes.lock().unwrap();
                let cell = map.entry(since).or_default().clone();
                evict(&mut map, MAX_CHANGES, |k| *k);
                cell
            };
            let got = cell
                .get_or_try_init(|| async {
                    self.metrics.changes_queries.inc();
                    Ok::<_, Error>(self.store.changes_since(since).await?.map(Arc::new))
                })
                .await?
                .clone();
            match got {
                None => return Ok(None),
                Some(c) => {
                    if c.checkpoint >= at_least {
                        return Ok(Some(c));
                    }
                    // Read before `at_least` was announced: ask again, once.
                    let mut map = self.changes.lock().unwrap();
                    if map.get(&since).is_some_and(|x| Arc::ptr_eq(x, &cell)) {
                        map.remove(&since);
                    }
                    answer = Some(c);
                }
            }
        }
        Ok(answer)
    }

    /// `Store::bucket_ops`, shared between identical requests.
    pub async fn bucket_ops(
        &self,
        buckets: &[String],
        afters: &[OpId],
        checkpoint: OpId,
        max_ops: u32,
    ) -> Result<Arc<Vec<OpRow>>, Error> {
        let key = PageKey {
            buckets: buckets.to_vec(),
            afters: afters.to_vec(),
            checkpoint,
            max_ops,
        };
        let cell = {
            let mut map = self.pages.lock().unwrap();
            let cell = map.entry(key).or_default().clone();
            evict(&mut map, MAX_PAGES, |k| k.checkpoint);
            cell
        };
        self.metrics.ops_pages.inc();
        let rows = cell
            .get_or_try_init(|| async {
                self.metrics.ops_queries.inc();
                let rows = self
                    .store
                    .bucket_ops(buckets, afters, checkpoint, max_ops)
                    .await?;
                Ok::<_, Error>(Arc::new(rows))
            })
            .await?;
        Ok(rows.clone())
    }
}

/// Drops the entries with the smallest `order` until at most `max` remain.
fn evict<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    max: usize,
    order: impl Fn(&K) -> OpId,
) {
    if map.len() <= max {
        return;
    }
    let mut keys: Vec<K> = map.keys().cloned().collect();
    keys.sort_by_key(|k| order(k));
    for k in keys.into_iter().take(map.len() - max / 2) {
        map.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeStore;
    use std::sync::atomic::Ordering::SeqCst;

    #[tokio::test]
    async fn identical_pages_are_read_once_and_shared() {
        let store = Arc::new(FakeStore::default());
        store.put("g[]", "1");
        store.put("g[]", "2");
        let metrics = Arc::new(Metrics::default());
        let f = Arc::new(Fanout::new(store.clone(), metrics.clone()));
        let names = vec!["g[]".to_string()];
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let f = f.clone();
                let names = names.clone();
                tokio::spawn(async move { f.bucket_ops(&names, &[OpId(0)], OpId(2), 10).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().len(), 2);
        }
        assert_eq!(store.bucket_ops_calls.load(SeqCst), 1);
        // Another key is another query.
        let rows = f.bucket_ops(&names, &[OpId(1)], OpId(2), 10).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(store.bucket_ops_calls.load(SeqCst), 2);
        assert_eq!(metrics.ops_queries.get(), 2);
    }

    #[tokio::test]
    async fn failed_reads_are_not_cached() {
        let store = Arc::new(FakeStore::default());
        store.put("g[]", "1");
        store.shared_changes.store(true, SeqCst);
        let f = Fanout::new(store.clone(), Arc::new(Metrics::default()));
        let names = vec!["g[]".to_string()];
        store.fail.store(true, SeqCst);
        assert!(f.bucket_ops(&names, &[OpId(0)], OpId(1), 10).await.is_err());
        assert!(f.changes_since(OpId(0), OpId(1)).await.is_err());
        store.fail.store(false, SeqCst);
        assert_eq!(
            f.bucket_ops(&names, &[OpId(0)], OpId(1), 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(f.changes_since(OpId(0), OpId(1)).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn stale_changes_are_read_again_once() {
        let store = Arc::new(FakeStore::default());
        store.put("g[]", "1");
        store.shared_changes.store(true, SeqCst);
        let metrics = Arc::new(Metrics::default());
        let f = Fanout::new(store.clone(), metrics.clone());
        let c = f.changes_since(OpId(0), OpId(1)).await.unwrap().unwrap();
        assert_eq!(c.checkpoint, OpId(1));
        // Cached: no new query.
        f.changes_since(OpId(0), OpId(1)).await.unwrap();
        assert_eq!(metrics.changes_queries.get(), 1);
        store.put("g[]", "2");
        let c = f.changes_since(OpId(0), OpId(2)).await.unwrap().unwrap();
        assert_eq!(c.checkpoint, OpId(2));
        assert_eq!(metrics.changes_queries.get(), 2);
    }

    #[test]
    fn eviction_keeps_the_newest() {
        let mut m: HashMap<OpId, ()> = (0..20).map(|i| (OpId(i), ())).collect();
        evict(&mut m, 16, |k| *k);
        assert_eq!(m.len(), 8);
        assert!(m.contains_key(&OpId(19)) && !m.contains_key(&OpId(11)));
    }
}
