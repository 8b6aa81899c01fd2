//! The tidy check (rust-analyzer's tidy tests are the model): the crate
//! graph `cargo metadata` reports must match ARCHITECTURE.md. Every
//! workspace member has an entry in the code map and a line in
//! "Dependency rules", and depends (normal and build dependencies; tests
//! may use more) on no workspace crate its line does not name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Crate → the workspace crates it may depend on (`None`: any).
pub type Rules = BTreeMap<String, Option<BTreeSet<String>>>;

/// Crate → its workspace dependencies.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

fn section<'a>(doc: &'a str, title: &str) -> Option<&'a str> {
    let start = doc.find(&format!("\n## {title}\n"))? + title.len() + 5;
    let rest = &doc[start..];
    Some(match rest.find("\n## ") {
        Some(end) => &rest[..end],
        None => rest,
    })
}

/// The names in backticks of a line: `skiff-a`, `skiff-b`.
fn ticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The crates of the code map: entries that start `- **`name`**` (but
/// not those built in their own workspace).
pub fn code_map(doc: &str) -> Result<BTreeSet<String>> {
    let map = section(doc, "Code map (one entry a crate)")
        .context("ARCHITECTURE.md has no \"## Code map (one entry a crate)\" section")?;
    Ok(map
        .lines()
        .filter(|l| !l.contains("its own workspace"))
        .filter_map(|l| l.strip_prefix("- **`"))
        .filter_map(|l| l.split_once("`**"))
        .map(|(name, _)| name.to_string())
        .collect())
}

/// The dependency rules: lines `- `crate` may depend on: `a`, `b`.`,
/// `- `crate` depends on no workspace crate.` or `- `crate` may depend on
/// any workspace crate.`
pub fn rules(doc: &str) -> Result<Rules> {
    let text = section(doc, "Dependency rules")
        .context("ARCHITECTURE.md has no \"## Dependency rules\" section")?;
    let mut out = Rules::new();
    for line in text.lines().filter(|l| l.starts_with("- `")) {
        let names = ticked(line);
        let (krate, deps) = names.split_first().expect("a ticked name");
        let allowed = if line.contains("may depend on any workspace crate") {
            None
        } else if line.contains("depends on no workspace crate") {
            Some(BTreeSet::new())
        } else if line.contains("may depend on:") {
            Some(deps.iter().cloned().collect())
        } else {
            bail!("ARCHITECTURE.md, Dependency rules: not understood: {line}");
        };
        if out.insert(krate.clone(), allowed).is_some() {
            bail!("ARCHITECTURE.md, Dependency rules: {krate} has two lines");
        }
    }
    Ok(out)
}

/// Everything the graph does that the document does not allow.
pub fn problems(graph: &Graph, rules: &Rules, map: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for (krate, deps) in graph {
        if !map.contains(krate) {
            out.push(format!(
                "{krate} is a workspace member without a code map entry"
            ));
        }
        match rules.get(krate) {
            None => out.push(format!("{krate} has no line in Dependency rules")),
            Some(None) => {}
            Some(Some(allowed)) => {
                for d in deps.difference(allowed) {
                    out.push(format!(
                        "{krate} depends on {d}, which ARCHITECTURE.md does not allow it"
                    ));
                }
            }
        }
    }
    for name in rules.keys().chain(map) {
        if !graph.contains_key(name) {
            out.push(format!(
                "ARCHITECTURE.md names {name}, which is not a workspace member"
            ));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The workspace's graph from `cargo metadata` (normal and build
/// dependencies between members).
pub fn graph(cargo: &mut Command) -> Result<Graph> {
    let out = cargo
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .output()
        .context("run cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    }
    let m: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cargo metadata's JSON")?;
    let packages = m["packages"].as_array().context("no packages")?;
    let members: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    let mut g = Graph::new();
    for p in packages {
        let name = p["name"].as_str().unwrap_or_default().to_string();
        let deps = p["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["kind"].is_null() || d["kind"] == "build")
            .filter_map(|d| d["name"].as_str())
            .filter(|d| members.contains(*d))
            .map(str::to_string)
            .collect();
        g.insert(name, deps);
    }
    Ok(g)
}

pub fn run(cargo: &mut Command, root: &Path) -> Result<()> {
    eprintln!("==> tidy: the crate graph against ARCHITECTURE.md");
    let doc =
        std::fs::read_to_string(root.join("ARCHITECTURE.md")).context("read ARCHITECTURE.md")?;
    let found = problems(&graph(cargo)?, &rules(&doc)?, &code_map(&doc)?);
    if !found.is_empty() {
        bail!("tidy:\n  {}", found.join("\n  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# A\n\n## Code map (one entry a crate)\n\n- **`app`** (`src/`): the binary.\n- **`lib-a`** (`a`): pure.\n- **`lib-b`** (`b`): I/O,\n  on two lines.\n- **`progs`** (`p`, its own workspace): elsewhere.\n\n## Dependency rules\n\n- `app` may depend on any workspace crate.\n- `lib-a` depends on no workspace crate.\n- `lib-b` may depend on: `lib-a`.\n\n## Invariants\n\n- `x` is not a rule here.\n";

    fn graph(edges: &[(&str, &[&str])]) -> Graph {
        edges
            .iter()
            .map(|(k, ds)| (k.to_string(), ds.iter().map(|d| d.to_string()).collect()))
            .collect()
    }

    #[test]
    fn the_document_is_read_into_a_map_and_rules() {
        let map = code_map(DOC).unwrap();
        assert_eq!(
            map.into_iter().collect::<Vec<_>>(),
            ["app", "lib-a", "lib-b"]
        );
        let r = rules(DOC).unwrap();
        assert_eq!(r["app"], None);
        assert_eq!(r["lib-a"], Some(BTreeSet::new()));
        assert_eq!(r["lib-b"], Some(["lib-a".to_string()].into()));
        assert_eq!(r.len(), 3, "lines outside the section are not rules");
    }

    #[test]
    fn a_forbidden_edge_a_missing_entry_and_a_stale_name_are_reported() {
        let (r, map) = (rules(DOC).unwrap(), code_map(DOC).unwrap());
        let ok = graph(&[
            ("app", &["lib-a", "lib-b"]),
            ("lib-a", &[]),
            ("lib-b", &["lib-a"]),
        ]);
        assert!(problems(&ok, &r, &map).is_empty());
        let bad = graph(&[("app", &[]), ("lib-a", &["lib-b"]), ("new", &[])]);
        assert_eq!(
            problems(&bad, &r, &map),
            [
                "ARCHITECTURE.md names lib-b, which is not a workspace member",
                "lib-a depends on lib-b, which ARCHITECTURE.md does not allow it",
                "new has no line in Dependency rules",
                "new is a workspace member without a code map entry",
            ]
        );
    }

    #[test]
    fn an_unreadable_rule_is_an_error() {
        let doc = DOC.replace("may depend on: `lib-a`", "likes `lib-a`");
        assert!(
            rules(&doc)
                .unwrap_err()
                .to_string()
                .contains("not understood")
        );
    }
}
