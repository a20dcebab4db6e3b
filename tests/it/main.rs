//! Integration tests against real stores made by podman/buildah/skopeo in temp dirs.
//!
//! They need root, podman, buildah, skopeo, docker-registry and /dev/fuse (CI has all of
//! them; `rootless` also uidmap and useradd); a missing tool fails the test rather than
//! skipping it.

mod api;
mod clients;
mod common;
mod compress;
mod hardening;
mod mount;
mod network;
mod podman5;
mod regressions;
mod rootless;
mod scaleout;
mod serve;
mod store;
