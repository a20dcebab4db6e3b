//! Referrers: the served manifests of a repository that name another manifest as their
//! `subject` (OCI distribution-spec "listing referrers").
//!
//! [`of_repo`] groups a repository's manifests by subject digest into [`Referrer`]
//! descriptors (media type, digest, size, artifact type, annotations), sorted by
//! digest; [`index_json`] renders the `application/vnd.oci.image.index.v1+json` answer.
//! The artifact type is the manifest's `artifactType`, else its config's media type.
//! Only served bytes are read: a rewritten manifest carries no subject.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::manifest::OCI_INDEX;
use super::{Registry, Repo};
use crate::Digest;

/// One entry of a referrers index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Referrer {
    pub media_type: &'static str,
    pub digest: Digest,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The fields of a manifest that matter here, parsed leniently.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    subject: Option<ProbeSubject>,
    #[serde(default)]
    artifact_type: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<ProbeConfig>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
struct ProbeSubject {
    #[serde(default)]
    digest: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProbeConfig {
    #[serde(default)]
    media_type: Option<serde_json::Value>,
}

fn string(v: Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// The subject a manifest names, and its referrer descriptor; `None` if it names none.
pub fn referrer_of(reg: &Registry, digest: &Digest) -> Option<(Digest, Referrer)> {
    let m = reg.manifests.get(digest)?;
    let probe: Probe = serde_json::from_slice(&m.bytes).ok()?;
    let subject: Digest = string(probe.subject?.digest)?.parse().ok()?;
    let artifact_type = string(probe.artifact_type).or_else(|| string(probe.config.and_then(|c| c.media_type)));
    let annotations = probe
        .annotations
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k, s)),
            _ => None,
        })
        .collect();
    Some((
        subject,
        Referrer {
            media_type: m.media_type.as_str(),
            digest: *digest,
            size: m.bytes.len() as u64,
            artifact_type,
            annotations,
        },
    ))
}

/// Referrers of every subject that has any in `repo`, each list sorted by digest.
pub fn of_repo(reg: &Registry, repo: &Repo) -> BTreeMap<Digest, Vec<Referrer>> {
    let mut out: BTreeMap<Digest, Vec<Referrer>> = BTreeMap::new();
    // `repo.manifests` is a sorted set: each list comes out sorted by digest.
    for d in &repo.manifests {
        if let Some((subject, r)) = referrer_of(reg, d) {
            out.entry(subject).or_default().push(r);
        }
    }
    out
}

/// `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[..]}`.
pub fn index_json<'a>(referrers: impl IntoIterator<Item = &'a Referrer>) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Index<'a> {
        schema_version: u32,
        media_type: &'a str,
        manifests: Vec<&'a Referrer>,
    }
    let ix = Index { schema_version: 2, media_type: OCI_INDEX, manifests: referrers.into_iter().collect() };
    serde_json::to_vec(&ix).expect("serializing plain structs cannot fail")
}

/// A media type (`type/subtype`, RFC 6838 restricted names) split in its two halves, or
/// `None`: only such artifact types get a file of their own (they become path components).
pub fn split_media_type(t: &str) -> Option<(&str, &str)> {
    let (a, b) = t.split_once('/')?;
    let name = |s: &str| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 127
            && b[0].is_ascii_alphanumeric()
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&c))
    };
    (name(a) && name(b)).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Manifest, MediaType};
    use std::sync::Arc;

    fn add(reg: &mut Registry, repo: &str, bytes: &str, mt: MediaType) -> Digest {
        let d = Digest::of(bytes.as_bytes());
        reg.manifests.insert(
            d,
            Manifest {
                digest: d,
                media_type: mt,
                bytes: Arc::from(bytes.as_bytes()),
                verbatim: true,
                image: "ab".repeat(32).parse().unwrap(),
                refs: vec![],
            },
        );
        reg.repos.entry(repo.into()).or_default().manifests.insert(d);
        d
    }

    #[test]
    fn referrers_group_by_subject_with_artifact_type_and_annotations() {
        let mut reg = Registry::default();
        let subject = add(&mut reg, "r", r#"{"schemaVersion":2,"config":{"mediaType":"x/y"}}"#, MediaType::OciManifest);
        let a = format!(
            r#"{{"schemaVersion":2,"artifactType":"application/vnd.example.sbom","config":{{"mediaType":"application/vnd.oci.image.config.v1+json"}},"subject":{{"digest":"{subject}"}},"annotations":{{"k":"v","n":1}}}}"#
        );
        let a = add(&mut reg, "r", &a, MediaType::OciManifest);
        let b = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json"}},"subject":{{"digest":"{subject}"}}}}"#
        );
        let b = add(&mut reg, "r", &b, MediaType::OciManifest);
        let missing = Digest::of(b"not stored");
        let c = format!(r#"{{"schemaVersion":2,"manifests":[],"subject":{{"digest":"{missing}"}}}}"#);
        let c = add(&mut reg, "r", &c, MediaType::OciIndex);
        // a bad subject digest is no subject
        add(&mut reg, "r", r#"{"schemaVersion":2,"subject":{"digest":"sha256:zz"}}"#, MediaType::OciManifest);

        let refs = of_repo(&reg, &reg.repos["r"]);
        assert_eq!(refs.len(), 2);
        let of_subject = &refs[&subject];
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(of_subject.iter().map(|r| r.digest).collect::<Vec<_>>(), want);
        let ra = of_subject.iter().find(|r| r.digest == a).unwrap();
        assert_eq!(ra.artifact_type.as_deref(), Some("application/vnd.example.sbom"));
        assert_eq!(ra.annotations, BTreeMap::from([("k".to_string(), "v".to_string())]));
        assert_eq!(ra.media_type, crate::registry::manifest::OCI_MANIFEST);
        let rb = of_subject.iter().find(|r| r.digest == b).unwrap();
        assert_eq!(rb.artifact_type.as_deref(), Some("application/vnd.oci.image.config.v1+json"));
        assert_eq!(rb.size, reg.manifests[&b].bytes.len() as u64);
        assert_eq!(refs[&missing][0].digest, c);
        assert_eq!(refs[&missing][0].artifact_type, None);

        let v: serde_json::Value = serde_json::from_slice(&index_json(of_subject)).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], OCI_INDEX);
        assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
        assert_eq!(v["manifests"][0]["digest"], want[0].to_string());
        assert!(v["manifests"][0].get("annotations").is_some() == (want[0] == a));
        let empty: serde_json::Value = serde_json::from_slice(&index_json([])).unwrap();
        assert_eq!(empty["manifests"], serde_json::json!([]));
    }

    #[test]
    fn media_types_split_only_when_path_safe() {
        assert_eq!(split_media_type("application/vnd.example+json"), Some(("application", "vnd.example+json")));
        for bad in ["application", "a/b/c", "../x", "a/..", "a/.b", "/b", "a/", "a/b c", "a/b%2f"] {
            assert_eq!(split_media_type(bad), None, "{bad}");
        }
    }
}
