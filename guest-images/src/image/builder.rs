//! Building the image of a recipe: resolve, fetch, unpack, configure, check, commit.

use serde::Serialize;

use super::apt::{self, DebRef};
use super::closure::check_closure;
use super::error::ImageError;
use super::fsutil::{mkdirs_in_root, sha256_hex, tree_hash, write_in_root};
use super::lists::AptLists;
use super::manifest::{Manifest, Package};
use super::progress::Progress;
use super::recipes::Recipe;
use super::store::Store;
use super::{extract, BuildOptions, Image, FORMAT_VERSION};

/// JSON bytes of a value made only of strings, numbers, vectors and string-keyed maps, which
/// serde_json always serialises.
pub(crate) fn json_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|e| format!("unserialisable: {e}").into_bytes())
}

/// sha256 of the recipe definition.
pub(crate) fn recipe_hash(recipe: &Recipe) -> String {
    sha256_hex(&json_bytes(recipe))
}

/// The content key of a recipe's image: the recipe definition, the exact .deb files, and the
/// builder's format version (bumped whenever the builder would produce a different tree from
/// the same inputs).
fn recipe_key(recipe: &Recipe, debs: &[(&DebRef, &str)]) -> String {
    #[derive(Serialize)]
    struct Input<'a> {
        format: u32,
        kind: &'static str,
        recipe: &'a Recipe,
        debs: Vec<(&'a str, &'a str)>,
    }
    let input = Input {
        format: FORMAT_VERSION,
        kind: "recipe",
        recipe,
        debs: debs.iter().map(|(d, h)| (d.file.as_str(), *h)).collect(),
    };
    sha256_hex(&json_bytes(&input))
}

/// The image of `recipe` alone (no user files): from the cache when a complete one with the
/// same content key is there, else built.
///
/// apt works from ditto's own lists, refreshed when older than a day. When a package or the
/// version the lists name cannot be found or fetched, the lists are refreshed and the build
/// tried once more: the archive moves on (security updates replace files) and lists that are
/// hours old can already point at files that are gone.
pub(crate) fn recipe_image(
    recipe: &Recipe,
    store: &Store,
    opts: &BuildOptions,
    progress: &Progress,
) -> Result<Image, ImageError> {
    recipe.validate()?;
    let lists = AptLists::open(store.apt_dir())?;
    lists.refresh_if_stale(progress)?;
    match recipe_image_with(&lists, recipe, store, opts, progress) {
        Err(ImageError::Download { package, .. }) if !lists.is_fresh() => {
            lists.update(progress, &format!("{package} not available"))?;
            recipe_image_with(&lists, recipe, store, opts, progress)
        }
        other => other,
    }
}

fn recipe_image_with(
    lists: &AptLists,
    recipe: &Recipe,
    store: &Store,
    opts: &BuildOptions,
    progress: &Progress,
) -> Result<Image, ImageError> {
    progress.plan(1);
    progress.step("resolving packages");
    let debs = apt::resolve(lists, &recipe.packages)?;
    let debs_dir = store.debs_dir();

    // The index's sha256 gives the key without downloading anything; only when an index entry
    // lacks one do the files have to be fetched first.
    let index_hashes: Option<Vec<String>> = debs.iter().map(|d| d.sha256.clone()).collect();
    let (hashes, fetched) = match index_hashes {
        Some(h) => (h, false),
        None => (apt::fetch_all(lists, &debs, &debs_dir, progress)?, true),
    };
    let pairs: Vec<(&DebRef, &str)> = debs.iter().zip(hashes.iter().map(String::as_str)).collect();
    let key = recipe_key(recipe, &pairs);
    let dir = store.entry_dir(&recipe.name, &key);
    if !opts.rebuild {
        if let Some(img) = store.load(&dir, &key) {
            return Ok(img);
        }
    }

    // Unpacking each package, configuration and check, manifest; fetch_all plans its own.
    progress.plan(debs.len() as u64 + 2);
    if !fetched {
        apt::fetch_all(lists, &debs, &debs_dir, progress)?;
    }
    let staging = store.staging(&recipe.name)?;
    let root = staging.path();
    extract::prepare_root(root)?;
    for d in &debs {
        progress.step(&format!("unpacking {}", d.package));
        extract::extract(&debs_dir.join(&d.file), root)?;
        extract::relativize_symlinks(root)?;
    }

    progress.step("writing configuration, checking shared libraries");
    for f in &recipe.files {
        write_in_root(root, &f.path, f.contents.as_bytes(), f.mode)?;
    }
    for w in &recipe.writable {
        mkdirs_in_root(root, w)?;
    }
    let closure = check_closure(root, Some(&recipe.entry))?;
    tracing::debug!(image = %recipe.name, elf_files = closure.files.len(), "closure complete");

    progress.step("writing manifest");
    let manifest = Manifest {
        format: FORMAT_VERSION,
        name: recipe.name.clone(),
        recipe_version: recipe.version,
        recipe_hash: recipe_hash(recipe),
        key: key.clone(),
        recipe_key: key,
        entry: recipe.entry.clone(),
        args: recipe.args.clone(),
        env: recipe.env.clone(),
        ports: recipe.ports.clone(),
        writable: recipe.writable.clone(),
        packages: pairs
            .iter()
            .map(|(d, h)| Package {
                name: d.package.clone(),
                version: d.version.clone(),
                arch: d.arch.clone(),
                file: d.file.clone(),
                sha256: (*h).to_owned(),
            })
            .collect(),
        user_files: Vec::new(),
        host_libraries: Vec::new(),
        tree_sha256: tree_hash(root)?,
    };
    store.commit(staging, manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::recipes;

    #[test]
    fn key_depends_on_recipe_debs_and_nothing_else() {
        let r = recipes::find("busybox").unwrap();
        let d = apt::parse_uri_line(
            "'http://x/busybox-static_1_amd64.deb' busybox-static_1_amd64.deb 1 SHA256:aa",
        )
        .unwrap();
        let k1 = recipe_key(&r, &[(&d, "aa")]);
        assert_eq!(k1, recipe_key(&r, &[(&d, "aa")]));
        assert_ne!(k1, recipe_key(&r, &[(&d, "bb")]));
        let mut r2 = r.clone();
        r2.args.push("-x".into());
        assert_ne!(k1, recipe_key(&r2, &[(&d, "aa")]));
        let mut r3 = r.clone();
        r3.description = "other words".into();
        assert_eq!(k1, recipe_key(&r3, &[(&d, "aa")]));
        assert_eq!(k1.len(), 64);
    }
}
