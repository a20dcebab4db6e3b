//! `live`: the one place that applies store changes.
//!
//! A [`Live`] owns the [`Store`], the shared [`IndexCache`] and the current [`View`]
//! (a snapshot plus the registry model built from it), swapped atomically by
//! [`Live::refresh`]. Readers take an `Arc<View>` and keep using it even while a newer
//! one is published. Full layer checks (parse the tar-split, compare the rebuilt size
//! with `diff-size`) are recorded here and fed into the next model. With compressed
//! delivery on, each new model also gets the compressed manifests whose blobs the
//! [`Compressor`] has ready, and a blob becoming ready republishes.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::compress::Compressor;
use crate::registry::{LayerChecks, Registry};
use crate::store::{self, Snapshot, Store};
use crate::tarsplit::toc::Objects;
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
    /// Parsed tables of contents of the composefs layers read last.
    objects: Mutex<Vec<(Id, Arc<Objects>)>>,
    /// Compressed delivery, when asked for (`compress=`).
    compressor: OnceLock<Arc<Compressor>>,
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
            objects: Mutex::default(),
            compressor: OnceLock::new(),
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

    /// Turns on compressed delivery: every view from the next refresh on also names
    /// the compressed blobs that are ready.
    pub fn set_compressor(self: &Arc<Self>, c: Arc<Compressor>) {
        c.attach(Arc::downgrade(self));
        let _ = self.compressor.set(c);
        self.checks_dirty.store(true, Ordering::Release);
    }

    pub fn compressor(&self) -> Option<&Arc<Compressor>> {
        self.compressor.get()
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Reloads the store if its metadata changed (or a check found a bad layer).
    /// Returns the new view if one was published.
    pub fn refresh(&self) -> Result<Option<Arc<View>>, store::Error> {
        let _one = self.refresh_lock.lock().unwrap_or_else(|p| p.into_inner());
        let compressed = self.compressor.get().is_some_and(|c| c.take_dirty());
        let dirty = self.checks_dirty.swap(false, Ordering::AcqRel) | compressed;
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
        let mut registry = {
            let checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
            Registry::build(&snapshot, &checks)
        };
        if let Some(c) = self.compressor.get() {
            c.apply(&mut registry);
        }
        let view = Arc::new(View { snapshot, registry, built: SystemTime::now() });
        self.view.store(view.clone());
        if let Some(c) = self.compressor.get() {
            c.want(&view);
        }
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
        let files = self.store.layer_files(id, layer.origin);
        let mut result = self.cache.get(id, &files.tar_split, layer.diff_size).and_then(|ix| ix.complete());
        if result.is_ok() && files.toc.is_some() {
            if let Err(e) = self.objects(id, &files) {
                result = Err(tarsplit::Error::Toc(e.to_string()));
            }
        }
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
            .layer_files_with_lowers(id, layer.origin)
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
        let blob = LayerBlob::new(*id, ix, &files.content_dirs)?;
        if files.toc.is_none() {
            return Ok(Arc::new(blob));
        }
        Ok(Arc::new(blob.with_objects(self.objects(id, &files)?)))
    }

    /// A composefs layer's content objects by entry name, parsed from its table of
    /// contents once and kept for the few layers read last.
    fn objects(&self, id: &Id, files: &store::LayerFiles) -> io::Result<Arc<Objects>> {
        const KEEP: usize = 8;
        if let Some(o) = self.objects.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(i, _)| i == id) {
            return Ok(o.1.clone());
        }
        let what = |e: &dyn std::fmt::Display| format!("layer {id}: table of contents: {e}");
        let bytes = match self.store.read_toc(files) {
            Some(Ok(b)) => b,
            Some(Err(e)) => return Err(io::Error::new(e.kind(), what(&e))),
            None => return Err(io::Error::other(what(&"none recorded"))),
        };
        let objects = Arc::new(Objects::parse(&bytes).map_err(|e| io::Error::other(what(&e)))?);
        let mut kept = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= KEEP {
            kept.remove(0);
        }
        kept.push((*id, objects.clone()));
        Ok(objects)
    }
}
