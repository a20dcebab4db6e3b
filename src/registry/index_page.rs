//! The browsable index: one self-contained HTML page (no external assets) listing every
//! repository, its tags with manifest digest, media type (verbatim or rewritten),
//! platforms of lists, total size and created time, and pull commands.
//!
//! [`render`] is pure: the same registry and images give the same bytes. Every name
//! is HTML-escaped. The pull commands name the host the page was loaded from (a few
//! lines of inline script read `location.host`); without script they show `HOST`.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;

use super::{Registry, Repo};
use crate::store::Image;
use crate::{Digest, Id};

/// `<`, `>`, `&`, `"` and `'` as entities.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1.5 MB`-style size (SI units, as podman prints them).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Every blob a manifest (or, for a list, its children) names, each once.
fn blobs_of(reg: &Registry, top: &Digest) -> BTreeSet<Digest> {
    let mut out = BTreeSet::new();
    let mut todo = vec![*top];
    let mut seen = BTreeSet::new();
    while let Some(d) = todo.pop() {
        if !seen.insert(d) {
            continue;
        }
        let Some(m) = reg.manifests.get(&d) else { continue };
        if m.media_type.is_index() {
            todo.extend(m.refs.iter().copied());
        } else {
            out.extend(m.refs.iter().copied());
        }
    }
    out
}

/// `os/arch[/variant]` of each child of a list, from the served bytes.
fn platforms(bytes: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let mut out = Vec::new();
    for m in v["manifests"].as_array().into_iter().flatten() {
        let p = &m["platform"];
        let parts: Vec<&str> =
            ["os", "architecture", "variant"].iter().filter_map(|k| p[*k].as_str()).filter(|s| !s.is_empty()).collect();
        out.push(if parts.is_empty() { "unknown".to_string() } else { parts.join("/") });
    }
    out
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}\
h1{font-size:1.5em}h2{font-size:1.15em;margin:1.6em 0 .4em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25em .6em .25em 0;vertical-align:top}\
th{font-weight:600;color:#555}code{font:13px ui-monospace,monospace}.d{word-break:break-all}\
.cmds{margin:.2em 0 .6em}.cmds code{display:block;background:#f4f4f4;padding:.15em .4em;margin:.15em 0;\
user-select:all;white-space:pre-wrap;word-break:break-all}.muted{color:#777}";

const SCRIPT: &str =
    "document.querySelectorAll('.host').forEach(function(e){e.textContent=location.host||e.textContent;});";

/// The whole page; `images` (the snapshot's) give the created times.
pub fn render(reg: &Registry, images: &[Image]) -> String {
    let created: HashMap<Id, &str> = images.iter().filter_map(|i| i.created.as_deref().map(|c| (i.id, c))).collect();
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str("<title>cstor-fs registry</title>\n<style>");
    h.push_str(STYLE);
    h.push_str("</style></head><body>\n<h1>cstor-fs registry</h1>\n");
    let _ = writeln!(
        h,
        "<p>{} repositories, served read-only from the local container store at \
         <code class=\"host\">HOST</code>. Plain HTTP: clients need <code>--tls-verify=false</code> \
         or the registry marked insecure.</p>",
        reg.repos.len()
    );
    if reg.repos.is_empty() {
        h.push_str("<p class=\"muted\">No images.</p>\n");
    }
    for (name, repo) in &reg.repos {
        render_repo(&mut h, reg, &created, name, repo);
    }
    h.push_str("<script>");
    h.push_str(SCRIPT);
    h.push_str("</script>\n</body></html>\n");
    h
}

fn render_repo(h: &mut String, reg: &Registry, created: &HashMap<Id, &str>, name: &str, repo: &Repo) {
    let n = escape(name);
    let _ = writeln!(h, "<section id=\"{n}\"><h2>{n}</h2>");
    if repo.tags.is_empty() {
        let _ = writeln!(h, "<p class=\"muted\">No tags; {} manifests by digest.</p>", repo.manifests.len());
    }
    for (tag, digest) in &repo.tags {
        let t = escape(tag);
        let Some(m) = reg.manifests.get(digest) else { continue };
        let size: u64 = blobs_of(reg, digest).iter().filter_map(|b| reg.blobs.get(b)).map(|b| b.size).sum();
        let how = if m.verbatim { "verbatim" } else { "rewritten" };
        let _ = writeln!(h, "<table><tr><th style=\"width:9em\">tag</th><td><b>{t}</b></td></tr>");
        let _ = writeln!(h, "<tr><th>digest</th><td><code class=\"d\">{digest}</code></td></tr>");
        let _ = writeln!(h, "<tr><th>media type</th><td><code>{}</code> ({how})</td></tr>", m.media_type.as_str());
        if m.media_type.is_index() {
            let p = platforms(&m.bytes).iter().map(|p| escape(p)).collect::<Vec<_>>().join(", ");
            let _ = writeln!(h, "<tr><th>platforms</th><td>{p}</td></tr>");
        }
        let _ = writeln!(h, "<tr><th>size</th><td>{} ({size} bytes)</td></tr>", human_size(size));
        if let Some(c) = created.get(&m.image) {
            let _ = writeln!(h, "<tr><th>created</th><td>{}</td></tr>", escape(c));
        }
        let r = format!("<span class=\"host\">HOST</span>/{n}:{t}");
        let _ = writeln!(
            h,
            "<tr><th>pull</th><td class=\"cmds\">\
             <code>podman pull --tls-verify=false {r}</code>\
             <code>skopeo copy --src-tls-verify=false docker://{r} containers-storage:{r}</code>\
             <code>bootc switch {r}</code>\
             <code>docker pull {r}</code></td></tr></table>"
        );
    }
    h.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape(r#"<a href="x">&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
        assert_eq!(escape("localhost/app:v1"), "localhost/app:v1");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1500), "1.5 kB");
        assert_eq!(human_size(106_967_040), "107.0 MB");
    }

    #[test]
    fn platforms_of_a_list() {
        let b = br#"{"manifests":[{"platform":{"os":"linux","architecture":"arm64","variant":"v8"}},{"platform":{"os":"linux","architecture":"amd64"}},{}]}"#;
        assert_eq!(platforms(b), ["linux/arm64/v8", "linux/amd64", "unknown"]);
    }

    #[test]
    fn an_empty_registry_renders_a_page() {
        let page = render(&Registry::default(), &[]);
        assert!(page.starts_with("<!DOCTYPE html>") && page.contains("No images.") && page.ends_with("</html>\n"));
        assert!(!page.contains("http://") && !page.contains("https://"), "no external assets");
    }
}
