//! The shared store: one key/value space per host, shared by every instance
//! of every filter, for state that must be right across instances and
//! threads (breaker counters, rate-limit buckets).
//!
//! Sharded mutexes keep contention low; expiry is checked on access and swept
//! in the background.

use std::hash::BuildHasher;

use foldhash::fast::RandomState;

use crate::FastMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Keys and values are bounded so that a filter cannot exhaust host memory.
pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
pub const MAX_ENTRIES: usize = 1_000_000;

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("key longer than {MAX_KEY_BYTES} bytes")]
    KeyTooLong,
    #[error("value longer than {MAX_VALUE_BYTES} bytes")]
    ValueTooLong,
    #[error("store is full ({MAX_ENTRIES} entries per shard)")]
    Full,
}

pub struct SharedStore {
    shards: Vec<Mutex<FastMap<String, Entry>>>,
    hasher: RandomState,
}

impl Default for SharedStore {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(FastMap::default()))
                .collect(),
            hasher: RandomState::default(),
        }
    }
}

fn expiry(now: Instant, ttl_ms: u64) -> Option<Instant> {
    (ttl_ms > 0).then(|| now + Duration::from_millis(ttl_ms))
}

impl SharedStore {
    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, FastMap<String, Entry>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(key: &str, value: &[u8]) -> Result<(), StoreError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(StoreError::KeyTooLong);
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(StoreError::ValueTooLong);
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        let shard = self.shard(key);
        shard
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
    }

    pub fn set(&self, key: String, value: Vec<u8>, ttl_ms: u64) -> Result<(), StoreError> {
        Self::check(&key, &value)?;
        let now = Instant::now();
        let mut shard = self.shard(&key);
        if shard.len() >= MAX_ENTRIES && !shard.contains_key(&key) {
            return Err(StoreError::Full);
        }
        shard.insert(
            key,
            Entry {
                value,
                expires: expiry(now, ttl_ms),
            },
        );
        Ok(())
    }

    pub fn cas(
        &self,
        key: String,
        expected: Option<&[u8]>,
        new: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        Self::check(&key, &new)?;
        let now = Instant::now();
        let mut shard = self.shard(&key);
        let current = shard
            .get(&key)
            .filter(|e| e.live(now))
            .map(|e| e.value.as_slice());
        if current != expected {
            return Ok(false);
        }
        if shard.len() >= MAX_ENTRIES && !shard.contains_key(&key) {
            return Err(StoreError::Full);
        }
        shard.insert(
            key,
            Entry {
                value: new,
                expires: expiry(now, ttl_ms),
            },
        );
        Ok(true)
    }

    /// Counters are stored as decimal text, so `get` shows them readably.
    pub fn add(&self, key: String, delta: i64, ttl_ms: u64) -> Result<i64, StoreError> {
        Self::check(&key, &[])?;
        let now = Instant::now();
        let mut shard = self.shard(&key);
        let len = shard.len();
        match shard.get_mut(&key).filter(|e| e.live(now)) {
            Some(e) => {
                let cur: i64 = std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let v = cur.wrapping_add(delta);
                e.value = v.to_string().into_bytes();
                Ok(v)
            }
            None => {
                if len >= MAX_ENTRIES && !shard.contains_key(&key) {
                    return Err(StoreError::Full);
                }
                shard.insert(
                    key,
                    Entry {
                        value: delta.to_string().into_bytes(),
                        expires: expiry(now, ttl_ms),
                    },
                );
                Ok(delta)
            }
        }
    }

    pub fn delete(&self, key: &str) {
        self.shard(key).remove(key);
    }

    /// Drops expired entries; run periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        for s in &self.shards {
            s.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, e| e.live(now));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_set_cas_add_delete() {
        let s = SharedStore::default();
        assert_eq!(s.get("a"), None);
        s.set("a".into(), b"1".to_vec(), 0).unwrap();
        assert_eq!(s.get("a"), Some(b"1".to_vec()));
        assert!(!s.cas("a".into(), Some(b"2"), b"3".to_vec(), 0).unwrap());
        assert!(s.cas("a".into(), Some(b"1"), b"3".to_vec(), 0).unwrap());
        assert!(s.cas("b".into(), None, b"x".to_vec(), 0).unwrap());
        assert!(!s.cas("b".into(), None, b"y".to_vec(), 0).unwrap());
        assert_eq!(s.add("n".into(), 5, 0).unwrap(), 5);
        assert_eq!(s.add("n".into(), -2, 0).unwrap(), 3);
        assert_eq!(s.get("n"), Some(b"3".to_vec()));
        s.delete("n");
        assert_eq!(s.add("n".into(), 1, 0).unwrap(), 1);
        assert_eq!(
            s.set("k".repeat(MAX_KEY_BYTES + 1), vec![], 0),
            Err(StoreError::KeyTooLong)
        );
    }

    #[test]
    fn ttl_expires() {
        let s = SharedStore::default();
        s.set("a".into(), b"1".to_vec(), 20).unwrap();
        s.add("c".into(), 1, 20).unwrap();
        assert!(s.get("a").is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(s.get("a"), None);
        assert_eq!(
            s.add("c".into(), 1, 20).unwrap(),
            1,
            "expired counter restarts"
        );
        s.sweep();
        assert_eq!(s.len(), 1);
    }
}
