//! A shared cache of layer indexes, so each tar-split is parsed once while in use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Error, Index};
use crate::Id;

/// Keeps recently used indexes up to a byte budget. Concurrent requests for the same
/// layer wait for one parse instead of parsing twice.
#[derive(Debug)]
pub struct IndexCache {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tick: u64,
    slots: HashMap<Id, Slot>,
}

#[derive(Debug)]
struct Slot {
    used: u64,
    cell: Arc<Mutex<Option<Arc<Index>>>>,
}

impl IndexCache {
    /// A cache holding indexes of at most `budget` heap bytes (at least the last one used).
    pub fn new(budget: usize) -> IndexCache {
        IndexCache { budget, inner: Mutex::default() }
    }

    /// The index of `layer`, parsing `tar_split` (gzip'd) if it is not cached.
    pub fn get(
        &self,
        layer: &Id,
        tar_split: &std::path::Path,
        expected_size: Option<u64>,
    ) -> Result<Arc<Index>, Error> {
        let cell = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.tick += 1;
            let tick = inner.tick;
            let slot = inner.slots.entry(*layer).or_insert_with(|| Slot { used: tick, cell: Arc::default() });
            slot.used = tick;
            slot.cell.clone()
        };
        let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ix) = guard.as_ref().filter(|ix| !ix.failed()) {
            return Ok(ix.clone());
        }
        // Parsed on demand by its readers (and in full by the layer check).
        let f = crate::confine::open_regular(tar_split)?;
        let ix = Arc::new(Index::open_gz(f, expected_size));
        *guard = Some(ix.clone());
        drop(guard);
        self.evict();
        Ok(ix)
    }

    fn evict(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let mut total = 0usize;
            let mut oldest: Option<(u64, Id)> = None;
            let mut filled = 0usize;
            for (id, slot) in &inner.slots {
                let Ok(cell) = slot.cell.try_lock() else { continue };
                if let Some(ix) = cell.as_ref() {
                    total += ix.heap_bytes();
                    filled += 1;
                    if oldest.is_none_or(|(t, _)| slot.used < t) {
                        oldest = Some((slot.used, *id));
                    }
                }
            }
            match oldest {
                Some((_, id)) if total > self.budget && filled > 1 => {
                    inner.slots.remove(&id);
                }
                _ => break,
            }
        }
        // Drop slots whose parse failed or never finished filling (cheap to redo).
        inner.slots.retain(|_, s| s.cell.try_lock().map(|c| c.is_some()).unwrap_or(true));
    }

    /// Heap bytes of the cached indexes.
    pub fn heap_bytes(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .slots
            .values()
            .filter_map(|s| s.cell.try_lock().ok().and_then(|c| c.as_ref().map(|i| i.heap_bytes())))
            .sum()
    }
}
