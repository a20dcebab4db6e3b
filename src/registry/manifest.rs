//! Manifest media types, lenient parsing of stored manifests, and the deterministic
//! rewrites served when a stored manifest cannot be served verbatim.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// The four manifest media types cstor-fs serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MediaType {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerList,
}

impl MediaType {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::OciManifest => OCI_MANIFEST,
            MediaType::OciIndex => OCI_INDEX,
            MediaType::DockerManifest => DOCKER_MANIFEST,
            MediaType::DockerList => DOCKER_LIST,
        }
    }

    /// A short file-name-safe word for the type (used as a file suffix by `fs`).
    pub fn kind(self) -> &'static str {
        match self {
            MediaType::OciManifest => "oci-manifest",
            MediaType::OciIndex => "oci-index",
            MediaType::DockerManifest => "docker-manifest",
            MediaType::DockerList => "docker-list",
        }
    }

    pub fn is_index(self) -> bool {
        matches!(self, MediaType::OciIndex | MediaType::DockerList)
    }

    pub fn is_docker(self) -> bool {
        matches!(self, MediaType::DockerManifest | MediaType::DockerList)
    }
}

/// What a stored manifest is, as far as serving it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredKind {
    Image(MediaType),
    Index(MediaType),
    /// Docker schema 1: always rewritten (as Docker schema 2).
    Schema1,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredDescriptor {
    #[serde(default)]
    pub media_type: Option<String>,
    pub digest: String,
    #[serde(default)]
    pub size: Option<i64>,
    #[serde(default)]
    pub platform: Option<serde_json::Value>,
}

/// Any stored manifest or index, parsed leniently.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stored {
    #[serde(default)]
    pub schema_version: Option<i64>,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<StoredDescriptor>,
    #[serde(default)]
    pub layers: Option<Vec<StoredDescriptor>>,
    #[serde(default)]
    pub manifests: Option<Vec<StoredDescriptor>>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Stored {
    pub fn parse(bytes: &[u8]) -> Result<Stored, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not valid JSON: {e}"))
    }

    pub fn kind(&self) -> Result<StoredKind, String> {
        match self.media_type.as_deref() {
            Some(OCI_MANIFEST) => Ok(StoredKind::Image(MediaType::OciManifest)),
            Some(DOCKER_MANIFEST) => Ok(StoredKind::Image(MediaType::DockerManifest)),
            Some(OCI_INDEX) => Ok(StoredKind::Index(MediaType::OciIndex)),
            Some(DOCKER_LIST) => Ok(StoredKind::Index(MediaType::DockerList)),
            Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED) => Ok(StoredKind::Schema1),
            Some("") | None => match (self.schema_version, &self.manifests, &self.config) {
                (Some(1), _, _) => Ok(StoredKind::Schema1),
                (_, Some(_), _) => Ok(StoredKind::Index(MediaType::OciIndex)),
                (_, None, Some(_)) => Ok(StoredKind::Image(MediaType::OciManifest)),
                _ => Err("manifest of unknown form".into()),
            },
            Some(other) => Err(format!("unsupported manifest media type {other:?}")),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    digest: Digest,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<&'a serde_json::Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<&'a BTreeMap<String, String>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Index<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<Descriptor<'a>>,
}

/// An image manifest naming uncompressed layers. Same inputs, same bytes.
pub fn rewrite_image(
    media_type: MediaType,
    config: (Digest, u64),
    layers: &[(Digest, u64)],
    annotations: Option<&BTreeMap<String, String>>,
) -> Vec<u8> {
    let docker = media_type.is_docker();
    let m = ImageManifest {
        schema_version: 2,
        media_type: media_type.as_str(),
        config: Descriptor {
            media_type: if docker { DOCKER_CONFIG } else { OCI_CONFIG },
            digest: config.0,
            size: config.1,
            platform: None,
        },
        layers: layers
            .iter()
            .map(|&(digest, size)| Descriptor {
                media_type: if docker { DOCKER_LAYER_TAR } else { OCI_LAYER_TAR },
                digest,
                size,
                platform: None,
            })
            .collect(),
        // Docker schema 2 has no annotations.
        annotations: if docker { None } else { annotations.filter(|a| !a.is_empty()) },
    };
    serde_json::to_vec(&m).expect("serializing plain structs cannot fail")
}

/// One child of a rebuilt index.
pub struct Child<'a> {
    pub media_type: MediaType,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<&'a serde_json::Value>,
}

/// An index of the given children.
pub fn rewrite_index(media_type: MediaType, children: &[Child]) -> Vec<u8> {
    let ix = Index {
        schema_version: 2,
        media_type: media_type.as_str(),
        manifests: children
            .iter()
            .map(|c| Descriptor {
                media_type: c.media_type.as_str(),
                digest: c.digest,
                size: c.size,
                platform: c.platform,
            })
            .collect(),
    };
    serde_json::to_vec(&ix).expect("serializing plain structs cannot fail")
}
