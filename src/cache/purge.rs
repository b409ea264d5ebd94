//! Purges by route and path prefix. Stored entries are found by hashes, not by path, so a
//! purge is a record (route, prefix, time) that every cache hit checks: an entry of that route
//! under that prefix (whole path segments, as route prefixes match) stored (or last
//! revalidated) at or before the purge is refetched. Every `Vary` variant goes through the
//! same check, so all of them are purged.
//!
//! Records are read lock-free on the hit path (`ArcSwap`); a record is dropped once no entry it
//! covers can still be served (`keep_for` after the purge: the route's `max_ttl` plus its stale
//! windows). More than [`MAX_RECORDS`] records on one route collapse into one purge of the whole
//! route, which purges at least as much.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::routing::prefix_matches;

/// Records kept per route before they collapse into a purge of the whole route.
pub const MAX_RECORDS: usize = 256;

#[derive(Debug, Clone)]
struct Record {
    prefix: String,
    at: SystemTime,
    until: SystemTime,
}

/// The purge records of every route.
#[derive(Default)]
pub struct Purges {
    records: ArcSwap<HashMap<String, Arc<[Record]>>>,
    /// Serialises writers (admin requests), never taken on the request path.
    write: Mutex<()>,
}

impl Purges {
    /// Records a purge of `route` under `prefix` now, kept for `keep_for`; returns its time.
    pub fn add(&self, route: &str, prefix: &str, keep_for: Duration) -> SystemTime {
        let _writing = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        let mut map: HashMap<String, Arc<[Record]>> = (**self.records.load()).clone();
        for records in map.values_mut() {
            if records.iter().any(|r| r.until < now) {
                *records = records.iter().filter(|r| r.until >= now).cloned().collect();
            }
        }
        map.retain(|_, records| !records.is_empty());
        let mut records: Vec<Record> = map.get(route).map(|r| r.to_vec()).unwrap_or_default();
        records.retain(|r| r.prefix != prefix);
        records.push(Record {
            prefix: prefix.to_string(),
            at: now,
            until: now + keep_for,
        });
        if records.len() > MAX_RECORDS {
            let until = records.iter().map(|r| r.until).max().unwrap_or(now);
            records = vec![Record {
                prefix: "/".to_string(),
                at: now,
                until,
            }];
        }
        map.insert(route.to_string(), records.into());
        self.records.store(Arc::new(map));
        now
    }

    /// Whether an entry of `route` for `path`, stored at `stored_at`, was purged since.
    pub fn purged(&self, route: &str, path: &str, stored_at: SystemTime) -> bool {
        let records = self.records.load();
        if records.is_empty() {
            return false;
        }
        records.get(route).is_some_and(|list| {
            list.iter()
                .any(|r| stored_at <= r.at && prefix_matches(&r.prefix, path))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cover_whole_segments() {
        assert!(prefix_matches("/a", "/a"));
        assert!(prefix_matches("/a", "/a/b"));
        assert!(!prefix_matches("/a", "/ab"));
        assert!(prefix_matches("/a/", "/a/b"));
        assert!(prefix_matches("/", "/anything"));
        assert!(!prefix_matches("/a/b", "/a"));
    }

    #[test]
    fn a_purge_covers_what_was_stored_before_it_on_its_route() {
        let p = Purges::default();
        let before = SystemTime::now() - Duration::from_millis(1);
        assert!(!p.purged("r", "/a/1", before));
        let at = p.add("r", "/a", Duration::from_secs(60));
        assert!(p.purged("r", "/a/1", before));
        assert!(p.purged("r", "/a/1", at));
        assert!(!p.purged("r", "/a/1", at + Duration::from_millis(1)));
        assert!(!p.purged("r", "/b/1", before));
        assert!(!p.purged("other", "/a/1", before));
    }

    #[test]
    fn records_expire_and_collapse() {
        let p = Purges::default();
        p.add("r", "/old", Duration::from_nanos(1));
        std::thread::sleep(Duration::from_millis(2));
        let before = SystemTime::now() - Duration::from_secs(1);
        p.add("r", "/new", Duration::from_secs(60));
        assert_eq!(
            p.records.load()["r"].len(),
            1,
            "the expired record was dropped"
        );
        for i in 0..=MAX_RECORDS {
            p.add("r", &format!("/p{i}"), Duration::from_secs(60));
        }
        assert!(p.records.load()["r"].len() <= 2);
        assert!(
            p.purged("r", "/anything", before),
            "collapsed into a purge of the route"
        );
    }
}
