//! User files layered onto a recipe image (`ditto image add`).
//!
//! The model, chosen because it is the simplest one that stays correct:
//! - An image with user files is always *the recipe image plus the complete list of user
//!   files*, never a layer on a layer. Its content key is a hash of the recipe image's key, each
//!   user file's path and contents, and each host library copied for them; adding a then b gives
//!   the same image as adding both at once.
//! - User files go to `/usr/local/bin/<file name>`; a later file with the same name replaces an
//!   earlier one.
//! - Libraries they need that the image lacks are copied from the host into
//!   `/usr/lib/x86_64-linux-gnu` (a directory ld.so searches without a cache), and a missing
//!   PT_INTERP is copied to its own path. Their hashes are part of the key, so a host library
//!   update makes a new image instead of reusing a stale one.
//! - When the recipe image changes (new package versions, edited recipe), `build` carries the
//!   user files over from the previous image, so they are not silently lost.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::builder::json_bytes;
use super::closure::{
    check_closure, find_library, read_elf, ElfInfo, HOST_LIB_DIRS, IMAGE_LIB_DIRS,
};
use super::error::{ImageError, IoContext};
use super::fsutil::{
    copy_tree, resolve_in_root, sha256_file, sha256_hex, tree_hash, write_in_root,
};
use super::manifest::{AddedFile, Manifest};
use super::progress::Progress;
use super::store::Store;
use super::{BuildOptions, Image, FORMAT_VERSION};

/// Where user files go inside the image.
pub(crate) const USER_BIN: &str = "/usr/local/bin";
/// Where host libraries go inside the image.
const HOST_LIB_DEST: &str = "/usr/lib/x86_64-linux-gnu";

/// One user file to put into an image.
#[derive(Debug, Clone)]
pub(crate) struct UserSource {
    /// Absolute path inside the image.
    pub dest: String,
    /// Where to read it now (the host file, or the copy in a previous image).
    pub read_from: PathBuf,
    /// The host path it was originally added from (for the manifest).
    pub source: String,
}

impl UserSource {
    /// A file given by the user on the host.
    pub(crate) fn from_host(path: &Path) -> Result<UserSource, ImageError> {
        let bad = |reason: &str| ImageError::BadUserFile {
            path: path.to_path_buf(),
            reason: reason.to_owned(),
        };
        let meta = fs::metadata(path).map_err(|e| bad(&e.to_string()))?;
        if !meta.is_file() {
            return Err(bad("not a regular file"));
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty() && !n.starts_with('.'))
            .ok_or_else(|| bad("the file name must be valid UTF-8 and not start with '.'"))?;
        let abs = fs::canonicalize(path).map_err(|e| bad(&e.to_string()))?;
        Ok(UserSource {
            dest: format!("{USER_BIN}/{name}"),
            read_from: abs.clone(),
            source: abs.display().to_string(),
        })
    }

    /// The user files of an existing image, read back from that image.
    pub(crate) fn carried_over(image: &Image) -> Vec<UserSource> {
        image
            .manifest
            .user_files
            .iter()
            .map(|f| UserSource {
                dest: f.path.clone(),
                read_from: image.root.join(f.path.trim_start_matches('/')),
                source: f.source.clone(),
            })
            .collect()
    }
}

/// A host file to copy into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostCopy {
    dest: String,
    host: PathBuf,
    sha256: String,
}

/// The image `base` (a recipe image) plus `sources`, from the cache or built.
pub(crate) fn with_user_files(
    store: &Store,
    base: &Image,
    sources: &[UserSource],
    opts: &BuildOptions,
    progress: &Progress,
) -> Result<Image, ImageError> {
    // Later sources with the same destination win.
    let mut by_dest: BTreeMap<&str, &UserSource> = BTreeMap::new();
    for s in sources {
        by_dest.insert(&s.dest, s);
    }
    progress.plan(2 + by_dest.len() as u64);
    progress.step("checking user files and the libraries they need");
    let mut files = Vec::new();
    let mut elfs = Vec::new();
    for s in by_dest.values() {
        let sha256 = sha256_file(&s.read_from)?;
        if let Some(info) = read_elf(&s.read_from)? {
            if !info.x86_64 {
                return Err(ImageError::BadUserFile {
                    path: PathBuf::from(&s.source),
                    reason: "not an x86-64 ELF file".into(),
                });
            }
            elfs.push((s.read_from.clone(), info));
        }
        files.push(AddedFile {
            path: s.dest.clone(),
            source: s.source.clone(),
            sha256,
        });
    }
    let host_libs = plan_host_libraries(&base.root, elfs)?;

    #[derive(Serialize)]
    struct Input<'a> {
        format: u32,
        kind: &'static str,
        recipe_key: &'a str,
        files: Vec<(&'a str, &'a str)>,
        host_libraries: Vec<(&'a str, &'a str)>,
    }
    let key = sha256_hex(&json_bytes(&Input {
        format: FORMAT_VERSION,
        kind: "user-files",
        recipe_key: &base.manifest.key,
        files: files
            .iter()
            .map(|f| (f.path.as_str(), f.sha256.as_str()))
            .collect(),
        host_libraries: host_libs
            .iter()
            .map(|h| (h.dest.as_str(), h.sha256.as_str()))
            .collect(),
    }));
    let name = &base.manifest.name;
    let dir = store.entry_dir(name, &key);
    if !opts.rebuild {
        if let Some(img) = store.load(&dir, &key) {
            return Ok(img);
        }
    }

    let staging = store.staging(name)?;
    let root = staging.path();
    copy_tree(&base.root, root)?;
    for (f, s) in files.iter().zip(by_dest.values()) {
        progress.step(&format!("adding {}", f.path));
        let bytes = fs::read(&s.read_from).at(&s.read_from)?;
        let mode = fs::metadata(&s.read_from)
            .at(&s.read_from)?
            .permissions()
            .mode()
            & 0o7777;
        write_in_root(root, &f.path, &bytes, mode)?;
    }
    for h in &host_libs {
        let bytes = fs::read(&h.host).at(&h.host)?;
        let mode = fs::metadata(&h.host).at(&h.host)?.permissions().mode() & 0o7777;
        write_in_root(root, &h.dest, &bytes, mode)?;
    }
    progress.step("checking shared libraries, writing manifest");
    check_closure(root, Some(&base.manifest.entry))?;
    let manifest = Manifest {
        key,
        user_files: files,
        host_libraries: host_libs
            .iter()
            .map(|h| AddedFile {
                path: h.dest.clone(),
                source: h.host.display().to_string(),
                sha256: h.sha256.clone(),
            })
            .collect(),
        tree_sha256: tree_hash(root)?,
        ..base.manifest.clone()
    };
    store.commit(staging, manifest)
}

/// Which host files the user ELFs need that the image at `image_root` lacks: shared libraries
/// (found the way the host's ld.so would find them, RUNPATH included) and the interpreter,
/// transitively. Libraries the image already has are used from the image.
fn plan_host_libraries(
    image_root: &Path,
    elfs: Vec<(PathBuf, ElfInfo)>,
) -> Result<Vec<HostCopy>, ImageError> {
    let host_root = Path::new("/");
    let mut planned: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut queue: VecDeque<(PathBuf, ElfInfo)> = elfs.into();
    let none = ElfInfo::default();
    while let Some((host, info)) = queue.pop_front() {
        if !info.x86_64 {
            continue;
        }
        let host_str = host.display().to_string();
        if let Some(interp) = &info.interp {
            let in_image = resolve_in_root(image_root, interp).is_some_and(|r| r.host.is_file());
            if !in_image && !planned.contains_key(interp) {
                let r = resolve_in_root(host_root, interp)
                    .filter(|r| r.host.is_file())
                    .ok_or_else(|| ImageError::HostLibraryMissing {
                        library: interp.clone(),
                        needed_by: host.clone(),
                    })?;
                planned.insert(interp.clone(), r.host);
            }
        }
        for lib in info.needed.iter().chain(&info.dlopens) {
            let dest = if lib.contains('/') {
                format!("/{}", lib.trim_start_matches('/'))
            } else {
                format!("{HOST_LIB_DEST}/{lib}")
            };
            if planned.contains_key(&dest)
                || find_library(image_root, lib, &none, "/", IMAGE_LIB_DIRS)?.is_some()
            {
                continue;
            }
            let found = find_library(host_root, lib, &info, &host_str, HOST_LIB_DIRS)?.ok_or_else(
                || ImageError::HostLibraryMissing {
                    library: lib.clone(),
                    needed_by: host.clone(),
                },
            )?;
            let lib_info = read_elf(&found.host)?.unwrap_or_default();
            planned.insert(dest, found.host.clone());
            queue.push_back((found.host, lib_info));
        }
    }
    planned
        .into_iter()
        .map(|(dest, host)| {
            Ok(HostCopy {
                sha256: sha256_file(&host)?,
                dest,
                host,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_image_gets_libc_and_interpreter_from_the_host() {
        let t = tempfile::tempdir().unwrap();
        crate::image::extract::prepare_root(t.path()).unwrap();
        let sh = fs::canonicalize("/bin/sh").unwrap();
        let info = read_elf(&sh).unwrap().unwrap();
        let plan = plan_host_libraries(t.path(), vec![(sh, info)]).unwrap();
        let dests: Vec<_> = plan.iter().map(|h| h.dest.as_str()).collect();
        assert!(
            dests.contains(&"/usr/lib/x86_64-linux-gnu/libc.so.6"),
            "{dests:?}"
        );
        assert!(dests.contains(&"/lib64/ld-linux-x86-64.so.2"), "{dests:?}");
        assert!(
            dests.contains(&"/usr/lib/x86_64-linux-gnu/libgcc_s.so.1"),
            "{dests:?}"
        );
    }

    #[test]
    fn directories_and_dot_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        assert!(UserSource::from_host(t.path()).is_err());
        let hidden = t.path().join(".x");
        fs::write(&hidden, b"x").unwrap();
        assert!(UserSource::from_host(&hidden).is_err());
        assert!(UserSource::from_host(&t.path().join("missing")).is_err());
        let ok = t.path().join("tool");
        fs::write(&ok, b"x").unwrap();
        assert_eq!(
            UserSource::from_host(&ok).unwrap().dest,
            "/usr/local/bin/tool"
        );
    }
}
