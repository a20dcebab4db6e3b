//! cstor-fs: containers-storage, read-only, as a registry-shaped file tree.
//!
//! Data flows one way: [`store`] parses the on-disk store into an immutable
//! [`store::Snapshot`]; [`tarsplit`] turns a layer's tar-split metadata plus its
//! files into a random-access [`tarsplit::LayerBlob`]; [`registry`] is a pure
//! model of repositories, tags, manifests and blobs built from a snapshot; [`fs`]
//! presents that model through FUSE; [`userns`] lets a rootless store be read with
//! the rights of podman's user namespace; [`sys`] is the OS plumbing. The binary (`main.rs`) is glue.

pub mod confine;
pub mod digest;
pub mod fs;
pub mod live;
pub mod registry;
pub mod serve;
pub mod store;
pub mod sys;
pub mod tarsplit;
pub mod userns;

pub use digest::{Digest, Id};
