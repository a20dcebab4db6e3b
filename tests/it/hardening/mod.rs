//! Issue: hardening. Real stores made with podman, damaged on purpose (bad input), and
//! faults while serving (layers removed mid-download, the store changing under load,
//! kill -9, read-only stores, load, least privilege).
//!
//! Every bad-input case has two or more sound images next to the damaged one and checks:
//! no panic (`cstor-fs list` exits cleanly, the mount daemon keeps running), no byte from
//! outside the layer directory, a log line or `cstor-fs list` entry naming what is wrong,
//! the damaged image left out or failing with EIO, and every other image still served
//! byte-exact (each blob hashes to its name).
//!
//! One file per part: the shared inputs, running and checking helpers, then the tests.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

mod bad_chains;
mod bad_json;
mod bad_tar_split;
mod checking;
mod http_faults;
mod inputs;
mod least_privilege;
mod read_only;
mod running;
mod systemd_unit;

use checking::*;
use inputs::*;
use least_privilege::test_user;
use running::*;
