//! `live`: the one place that applies store changes.
//!
//! A [`Live`] owns the [`Store`], the shared [`IndexCache`] and the current [`View`]
//! (a snapshot plus the registry model built from it), swapped atomically by
//! [`Live::refresh`]. Readers take an `Arc<View>` and keep using it even while a newer
//! one is published. Full layer checks (parse the tar-split, compare the rebuilt size
//! with `diff-size`) are recorded here and fed into the next model.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::registry::{LayerChecks, Registry};
use crate::store::{self, Snapshot, Store};
use crate::tarsplit::{self, IndexCache, LayerBlob};
use crate::Id;

/// Default heap budget of cached layer indexes.
pub const DEFAULT_INDEX_BUDGET: usize = 256 << 20;

/// One consistent state: what the store held and what is served for it.
#[derive(Debug)]
pub struct View {
    pub snapshot: Snapshot,
    pub registry: Registry,
    /// When this view was built (used as the mtime of mutable files).
    pub built: SystemTime,
}

#[derive(Debug)]
pub struct Live {
    store: Store,
    cache: IndexCache,
    view: ArcSwap<View>,
    checks: Mutex<LayerChecks>,
    /// Set when a check found a problem the current view does not reflect yet.
    checks_dirty: AtomicBool,
    refresh_lock: Mutex<()>,
}

impl Live {
    /// Opens the store and builds the first view.
    pub fn new(store: Store, index_budget: usize) -> Result<Live, store::Error> {
        let snapshot = store.load()?;
        let live = Live {
            store,
            cache: IndexCache::new(index_budget),
            view: ArcSwap::from_pointee(View {
                registry: Registry::default(),
                snapshot: snapshot.clone(),
                built: SystemTime::now(),
            }),
            checks: Mutex::default(),
            checks_dirty: AtomicBool::new(false),
            refresh_lock: Mutex::new(()),
        };
        live.publish(snapshot);
        Ok(live)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn cache(&self) -> &IndexCache {
        &self.cache
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Reloads the store if its metadata changed (or a check found a bad layer).
    /// Returns the new view if one was published.
    pub fn refresh(&self) -> Result<Option<Arc<View>>, store::Error> {
        let _one = self.refresh_lock.lock().unwrap_or_else(|p| p.into_inner());
        let dirty = self.checks_dirty.swap(false, Ordering::AcqRel);
        if !dirty && self.store.token() == self.view().snapshot.token {
            return Ok(None);
        }
        let snapshot = self.store.load()?;
        Ok(Some(self.publish(snapshot)))
    }

    fn publish(&self, snapshot: Snapshot) -> Arc<View> {
        // Layers whose size only a parse can tell must be checked before serving.
        let unknown: Vec<Id> =
            snapshot.layers.values().filter(|l| l.diff_size.is_none() && l.problem.is_none()).map(|l| l.id).collect();
        for id in unknown {
            if !self.checks.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&id) {
                let _ = self.check_layer(&snapshot, &id);
            }
        }
        let registry = {
            let checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
            Registry::build(&snapshot, &checks)
        };
        let view = Arc::new(View { snapshot, registry, built: SystemTime::now() });
        self.view.store(view.clone());
        view
    }

    /// Parses a layer's tar-split and records whether it rebuilds to `diff-size`.
    /// A layer not in `snapshot` is an error of kind `NotFound`, and is not recorded.
    pub fn check_layer(&self, snapshot: &Snapshot, id: &Id) -> Result<u64, tarsplit::Error> {
        let Some(layer) = snapshot.layers.get(id) else {
            let e = io::Error::new(io::ErrorKind::NotFound, format!("layer {id} is not in the store"));
            return Err(tarsplit::Error::Io(e));
        };
        // Through the cache: the first open of the layer then reuses this parse.
        let path = self.store.layer_files(id).tar_split;
        let result = self.cache.get(id, &path, layer.diff_size).and_then(|ix| ix.complete());
        self.record_check(id, result.clone());
        result
    }

    fn record_check(&self, id: &Id, result: Result<u64, tarsplit::Error>) {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(why) = &result {
            if checks.get(id).is_none_or(|r| r.is_ok()) {
                log::warn!("layer {id} cannot be served: {why}");
                self.checks_dirty.store(true, Ordering::Release);
            }
        }
        checks.insert(*id, result);
    }

    /// Checks every served layer not yet checked. Returns how many were checked.
    pub fn check_unchecked(&self) -> usize {
        let view = self.view();
        let todo: HashSet<Id> = view
            .registry
            .blobs
            .values()
            .filter_map(|b| match b.source {
                crate::registry::BlobSource::Layer(id) => Some(id),
                _ => None,
            })
            .filter(|id| !self.checks.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id))
            .collect();
        for id in &todo {
            let _ = self.check_layer(&view.snapshot, id);
        }
        todo.len()
    }

    /// Opens a layer blob for reading. A tar-split that does not rebuild to the
    /// recorded size is an error (and leaves the layer out of the next view).
    pub fn open_layer(&self, view: &View, id: &Id) -> io::Result<Arc<LayerBlob>> {
        let layer = view
            .snapshot
            .layers
            .get(id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("layer {id} is not in the store")))?;
        let files = self
            .store
            .layer_files_with_lowers(id)
            .map_err(|e| io::Error::new(e.kind(), format!("layer {id}: reading lower: {e}")))?;
        let ix = match self.cache.get(id, &files.tar_split, layer.diff_size) {
            Ok(ix) => ix,
            Err(e) => {
                let msg = format!("layer {id}: {e}");
                if !matches!(e, tarsplit::Error::Io(_)) {
                    self.record_check(id, Err(e.clone()));
                }
                return Err(io::Error::other(msg));
            }
        };
        Ok(Arc::new(LayerBlob::new(*id, ix, &files.content_dirs)?))
    }
}
