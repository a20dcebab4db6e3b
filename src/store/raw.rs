//! Lenient serde mirrors of `images.json` and `layers.json` entries.
//!
//! Every field that may be absent is optional; unknown fields are ignored. Checking
//! (ids, digests, sizes) happens when these are converted into the model types in
//! `store::mod`, so one malformed entry costs only that entry.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct RawImage {
    pub id: String,
    #[serde(default)]
    pub names: Option<Vec<String>>,
    #[serde(default)]
    pub layer: Option<String>,
    #[serde(default, rename = "big-data-names")]
    pub big_data_names: Option<Vec<String>>,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawLayer {
    pub id: String,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default, rename = "diff-digest")]
    pub diff_digest: Option<String>,
    #[serde(default, rename = "diff-size")]
    pub diff_size: Option<i64>,
    #[serde(default)]
    pub flags: Option<serde_json::Map<String, serde_json::Value>>,
}
