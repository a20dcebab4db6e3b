//! Integration tests against real stores made by podman/buildah/skopeo in temp dirs.
//!
//! They need root, podman, buildah, skopeo, docker-registry and /dev/fuse (CI has all of
//! them; `rootless` also uidmap and useradd); a missing tool fails the test rather than
//! skipping it.

mod clients;
mod common;
mod hardening;
mod mount;
mod regressions;
mod rootless;
mod serve;
mod store;
