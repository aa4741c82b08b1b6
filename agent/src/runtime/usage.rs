//! What containers' read-write layers hold on disk, for stats.
//!
//! Counting a layer means walking it, and a container decides how big that walk is (a
//! million empty files take seconds cold). The kubelet asks every ten seconds, for every
//! container, so answers come from a cache: a stale figure is returned at once while one
//! walk at a time refreshes it on a blocking thread, never on the async workers. A layer
//! never counted before is waited for a short while; past that the call answers with
//! nothing counted yet and the walk goes on (as containerd's stats answer from its
//! periodically synced snapshot usage).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{Semaphore, watch};

/// How long a figure is served before it is counted again.
const FRESH: Duration = Duration::from_secs(10);
/// How long a first count is waited for.
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// A figure nobody asked for in this long is forgotten (its container is likely gone).
const FORGET: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

struct Slot {
    /// The last count, when it was made; `None` until the first walk ends.
    counted: watch::Sender<Option<(Usage, Instant)>>,
    refreshing: bool,
    asked: Instant,
}

/// Cached disk use of directories that containers write.
#[derive(Clone)]
pub struct UsageCache {
    slots: Arc<Mutex<HashMap<PathBuf, Slot>>>,
    /// One walk at a time: a node's stats never take more than one blocking thread.
    walking: Arc<Semaphore>,
}

impl Default for UsageCache {
    fn default() -> Self {
        UsageCache {
            slots: Arc::default(),
            walking: Arc::new(Semaphore::new(1)),
        }
    }
}

impl UsageCache {
    /// The bytes and inodes below `dir`, as last counted (refreshed in the background
    /// when older than [`FRESH`]).
    pub async fn usage(&self, dir: &Path) -> Usage {
        let mut counted = self.lookup(dir);
        if let Some((usage, _)) = *counted.borrow() {
            return usage;
        }
        // Never counted: wait for the first walk, a little.
        let first = tokio::time::timeout(FIRST_WAIT, counted.wait_for(Option::is_some)).await;
        match first {
            Ok(Ok(value)) => value.map(|(usage, _)| usage).unwrap_or_default(),
            _ => Usage::default(),
        }
    }

    /// The count of `dir` as it stands, with a refresh started if it is due.
    fn lookup(&self, dir: &Path) -> watch::Receiver<Option<(Usage, Instant)>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        slots.retain(|_, slot| slot.refreshing || now.duration_since(slot.asked) < FORGET);
        let slot = slots.entry(dir.to_path_buf()).or_insert_with(|| Slot {
            counted: watch::channel(None).0,
            refreshing: false,
            asked: now,
        });
        slot.asked = now;
        let due = match *slot.counted.borrow() {
            None => true,
            Some((_, at)) => now.duration_since(at) >= FRESH,
        };
        if due && !slot.refreshing {
            slot.refreshing = true;
            self.refresh(dir.to_path_buf());
        }
        slot.counted.subscribe()
    }

    /// Counts `dir` again on a blocking thread, one walk at a time across the node.
    fn refresh(&self, dir: PathBuf) {
        let cache = self.clone();
        tokio::spawn(async move {
            let permit = cache.walking.clone().acquire_owned().await;
            let walked = dir.clone();
            let counted = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                crate::sys::disk_usage(&walked)
            })
            .await;
            let mut slots = cache.slots.lock().unwrap_or_else(|e| e.into_inner());
            let Some(slot) = slots.get_mut(&dir) else {
                return; // forgotten meanwhile
            };
            slot.refreshing = false;
            if let Ok((bytes, inodes)) = counted {
                slot.counted
                    .send_replace(Some((Usage { bytes, inodes }, Instant::now())));
            }
        });
    }

    /// Forgets `dir` (its container was removed).
    pub fn forget(&self, dir: &Path) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_once_then_serves_the_cached_figure() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 8192]).unwrap();
        let cache = UsageCache::default();
        let first = cache.usage(dir.path()).await;
        assert_eq!(first.inodes, 1);
        assert!(first.bytes >= 8192);
        // Within FRESH the cached figure is served, whatever changed.
        std::fs::write(dir.path().join("b"), b"x").unwrap();
        assert_eq!(cache.usage(dir.path()).await, first);
        cache.forget(dir.path());
        assert_eq!(cache.usage(dir.path()).await.inodes, 2);
    }
}
