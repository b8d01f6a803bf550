//! Names of shards and sources, and the small ids the state uses for them.
//! New names are persisted with the next commit.

use std::collections::{BTreeMap, HashMap};

/// Registry name prefix of shards.
const SHARD: &str = "shard:";
/// Registry name prefix of sources.
const SOURCE: &str = "source:";

#[derive(Debug, Default)]
pub(super) struct Registry {
    ids: BTreeMap<String, u32>,
    pending: Vec<(String, u32)>,
    source_names: HashMap<u32, String>,
}

impl Registry {
    /// The registry read back from the store.
    pub(super) fn new(ids: BTreeMap<String, u32>) -> Self {
        let source_names = ids
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(SOURCE).map(|n| (*v, n.to_string())))
            .collect();
        Registry {
            ids,
            pending: Vec::new(),
            source_names,
        }
    }

    fn id(&mut self, name: String) -> u32 {
        if let Some(id) = self.ids.get(&name) {
            return *id;
        }
        let id = self.ids.values().max().map_or(0, |m| m + 1);
        self.ids.insert(name.clone(), id);
        self.pending.push((name, id));
        id
    }

    /// How many shards the stream `name` was created with, if it exists:
    /// one is stored under `name`, more under `name#0`, `name#1`, ...
    pub(super) fn stream_shards(&self, name: &str) -> Option<u32> {
        if self.ids.contains_key(&format!("{SHARD}{name}")) {
            return Some(1);
        }
        let n = (0..)
            .take_while(|i| self.ids.contains_key(&format!("{SHARD}{name}#{i}")))
            .count() as u32;
        (n > 0).then_some(n)
    }

    pub(super) fn shard_id(&mut self, name: &str) -> u32 {
        self.id(format!("{SHARD}{name}"))
    }

    pub(super) fn source_id(&mut self, name: &str) -> u32 {
        let id = self.id(format!("{SOURCE}{name}"));
        self.source_names
            .entry(id)
            .or_insert_with(|| name.to_string());
        id
    }

    pub(super) fn source_name(&self, id: u32) -> &str {
        self.source_names.get(&id).map_or("?", |s| s.as_str())
    }

    /// New names since the last call, for the commit.
    pub(super) fn take_pending(&mut self) -> Vec<(String, u32)> {
        std::mem::take(&mut self.pending)
    }
}
