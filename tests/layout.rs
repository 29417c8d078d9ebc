//! The workspace's shape, as ARCHITECTURE.md draws it: which crate may depend on which
//! (the det runtime builds without `devices` and `vmm`; replication without `vmm`), and no
//! source file over 800 lines. Read from the Cargo manifests and the source tree themselves,
//! so a change that breaks the picture fails here rather than in review.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The longest a source file may be (tests aside).
const MAX_SOURCE_LINES: usize = 800;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Each workspace crate's directory (relative to the root) and its manifest text.
fn manifests() -> BTreeMap<String, String> {
    let top = fs::read_to_string(root().join("Cargo.toml")).expect("root Cargo.toml");
    let members = top
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = "))
        .expect("a members line in the root Cargo.toml");
    let mut out = BTreeMap::new();
    out.insert(".".to_string(), top.clone());
    for m in members.trim_matches(|c| c == '[' || c == ']').split(',') {
        let dir = m.trim().trim_matches('"').to_string();
        let text = fs::read_to_string(root().join(&dir).join("Cargo.toml"))
            .unwrap_or_else(|e| panic!("{dir}/Cargo.toml: {e}"));
        out.insert(dir, text);
    }
    out
}

/// The workspace crates a manifest's `[dependencies]` name by path (build and normal
/// dependencies: what the crate needs to build; dev-dependencies are the tests' business).
fn path_dependencies(manifest: &str) -> BTreeSet<String> {
    let mut deps = BTreeSet::new();
    let mut section = String::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section != "[dependencies]" && section != "[build-dependencies]" {
            continue;
        }
        if let Some(path) = line.split("path = \"").nth(1) {
            let dir = path.split('"').next().unwrap_or_default();
            deps.insert(dir.trim_start_matches("../").to_string());
        }
    }
    deps
}

/// Every workspace crate `dir` builds with, directly or not.
fn closure(all: &BTreeMap<String, BTreeSet<String>>, dir: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![dir.to_string()];
    while let Some(d) = todo.pop() {
        for dep in all.get(&d).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

#[test]
fn crates_depend_one_way() {
    let deps: BTreeMap<String, BTreeSet<String>> = manifests()
        .into_iter()
        .map(|(dir, text)| (dir, path_dependencies(&text)))
        .collect();
    assert!(
        deps.contains_key("det") && deps.contains_key("replica"),
        "{deps:?}"
    );
    // Each crate and the crates it must build without.
    let forbidden: &[(&str, &[&str])] = &[
        ("guest-memory", &["det", "replica", "devices", "vmm"]),
        ("det", &["replica", "devices", "vmm"]),
        ("replica", &["devices", "vmm"]),
        ("devices", &["vmm"]),
    ];
    for (krate, not) in forbidden {
        let needs = closure(&deps, krate);
        for n in *not {
            assert!(
                !needs.contains(*n),
                "{krate} builds with {n} ({needs:?}); ARCHITECTURE.md says it must not"
            );
        }
    }
    for (krate, _) in deps.iter() {
        assert!(
            !closure(&deps, krate).contains(krate.as_str()),
            "{krate} depends on itself through {:?}",
            closure(&deps, krate)
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            // Build output and integration tests are not the sources this rule is about.
            if name != "target" && name != "tests" && !name.starts_with('.') {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" && !name.ends_with("_tests.rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_source_file_is_over_800_lines() {
    let mut files = Vec::new();
    for dir in manifests().keys() {
        let src = root().join(dir).join("src");
        rust_files(&src, &mut files);
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = fs::read_to_string(f).ok()?.lines().count();
            (n > MAX_SOURCE_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "over {MAX_SOURCE_LINES} lines: {long:?}");
}
