//! cstor-fs: containers-storage, read-only, as a registry-shaped file tree.
//!
//! Data flows one way: [`store`] parses the on-disk store into an immutable
//! [`store::Snapshot`]; [`tarsplit`] turns a layer's tar-split metadata plus its
//! files into a random-access [`tarsplit::LayerBlob`]; [`registry`] is a pure
//! model of repositories, tags, manifests and blobs built from a snapshot; [`fs`]
//! presents that model through FUSE; [`userns`] lets a rootless store be read with
//! the rights of podman's user namespace; [`compress`] builds and caches compressed
//! layer blobs for the opt-in compressed delivery; [`serve`] runs nginx or Caddy over a
//! mount, with [`tls`] certificates and [`htpasswd`] users when serving beyond loopback;
//! [`publish`] uploads images to S3-compatible storage; [`sys`] is the OS plumbing. The binary (`main.rs`) is glue.

pub mod compress;
pub mod confine;
pub mod digest;
pub mod fs;
pub mod htpasswd;
pub mod live;
pub mod publish;
pub mod registry;
pub mod serve;
pub mod store;
pub mod sys;
pub mod tarsplit;
pub mod tls;
pub mod userns;

pub use digest::{Digest, Id};
