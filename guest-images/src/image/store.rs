//! The on-disk cache: downloaded .debs and finished images, keyed by content.
//!
//! ```text
//! <cache>/apt/                           ditto's own apt lists and state (see lists.rs)
//! <cache>/debs/<apt file name>.deb       downloaded packages, checked against the index hash
//! <cache>/images/<name>-<key16>/         one finished image root (manifest + .complete inside)
//! <cache>/images/<name> -> <name>-<key16> the current image for a name (relative symlink)
//! <cache>/images/.build-<name>-XXXX/     a build in progress (renamed into place when done)
//! ```
//!
//! An image directory only ever appears by `rename` of a finished staging directory, and its
//! `.complete` marker (written last) records the key and the manifest's hash. An entry whose
//! marker is missing or wrong, or whose manifest is missing, unparseable or for another key, is
//! treated as absent and rebuilt.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{ImageError, IoContext};
use super::fsutil::{sha256_hex, write_atomic};
use super::manifest::Manifest;
use super::{Image, FORMAT_VERSION, MANIFEST_FILE, MARKER_FILE};

/// Hex digits of the key used in directory names: enough to make collisions irrelevant, short
/// enough to read.
const KEY_DIGITS: usize = 16;

/// A cache directory.
pub(crate) struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the cache at `dir`.
    pub(crate) fn open(dir: PathBuf) -> Result<Store, ImageError> {
        let s = Store { dir };
        for d in [s.debs_dir(), s.images_dir()] {
            fs::create_dir_all(&d).at(&d)?;
        }
        Ok(s)
    }

    /// Where .deb files are kept.
    pub(crate) fn debs_dir(&self) -> PathBuf {
        self.dir.join("debs")
    }

    /// Where ditto's apt lists and state are kept.
    pub(crate) fn apt_dir(&self) -> PathBuf {
        self.dir.join("apt")
    }

    /// Where images are kept.
    pub(crate) fn images_dir(&self) -> PathBuf {
        self.dir.join("images")
    }

    /// The directory of the image `name` with content key `key`.
    pub(crate) fn entry_dir(&self, name: &str, key: &str) -> PathBuf {
        let short = key.get(..KEY_DIGITS).unwrap_or(key);
        self.images_dir().join(format!("{name}-{short}"))
    }

    fn pointer(&self, name: &str) -> PathBuf {
        self.images_dir().join(name)
    }

    /// The image at `dir` if it is complete and is the image for `key`.
    pub(crate) fn load(&self, dir: &Path, key: &str) -> Option<Image> {
        match validate(dir, key) {
            Ok(manifest) => Some(Image {
                root: dir.to_path_buf(),
                manifest,
            }),
            Err(why) => {
                if dir.exists() {
                    tracing::info!(dir = %dir.display(), "cached image is unusable ({why}); rebuilding");
                }
                None
            }
        }
    }

    /// The current image for `name`, if the pointer leads to a complete image.
    pub(crate) fn current(&self, name: &str) -> Option<Image> {
        let target = fs::read_link(self.pointer(name)).ok()?;
        // The pointer is a bare directory name; anything else was not written by us.
        if target.components().count() != 1 {
            return None;
        }
        let dir = self.images_dir().join(target);
        let key = Manifest::read(&dir.join(MANIFEST_FILE)).ok()?.key;
        if self.entry_dir(name, &key) != dir {
            return None;
        }
        self.load(&dir, &key)
    }

    /// Points `name` at the image directory `dir` (atomically replacing the old pointer).
    pub(crate) fn set_current(&self, name: &str, dir: &Path) -> Result<(), ImageError> {
        let target = dir.file_name().ok_or_else(|| ImageError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other("image directory has no name"),
        })?;
        let pointer = self.pointer(name);
        if fs::read_link(&pointer).is_ok_and(|t| t == Path::new(target)) {
            return Ok(());
        }
        let tmp = self.images_dir().join(format!(
            ".pointer-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::os::unix::fs::symlink(target, &tmp).at(&tmp)?;
        fs::rename(&tmp, &pointer).map_err(|source| {
            let _ = fs::remove_file(&tmp);
            ImageError::Io {
                path: pointer.clone(),
                source,
            }
        })
    }

    /// A fresh staging directory next to the images, so the final rename stays on one file
    /// system. Dropping it (on a failed build) removes it.
    pub(crate) fn staging(&self, name: &str) -> Result<tempfile::TempDir, ImageError> {
        let dir = self.images_dir();
        tempfile::Builder::new()
            .prefix(&format!(".build-{name}-"))
            .tempdir_in(&dir)
            .at(&dir)
    }

    /// Finishes a staged image: writes the manifest, then the marker, then renames the staging
    /// directory to its entry directory. If a concurrent build got there first with a complete
    /// image, that one is used and ours is dropped.
    pub(crate) fn commit(
        &self,
        staging: tempfile::TempDir,
        manifest: Manifest,
    ) -> Result<Image, ImageError> {
        let root = staging.path();
        let mpath = root.join(MANIFEST_FILE);
        let json = manifest.to_json(&mpath)?;
        write_atomic(&mpath, &json)?;
        write_atomic(
            &root.join(MARKER_FILE),
            marker_text(&manifest.key, &sha256_hex(&json)).as_bytes(),
        )?;

        let dest = self.entry_dir(&manifest.name, &manifest.key);
        if let Some(existing) = self.load(&dest, &manifest.key) {
            return Ok(existing);
        }
        if fs::symlink_metadata(&dest).is_ok() {
            remove_any(&dest)?;
        }
        let staged = staging.keep();
        match fs::rename(&staged, &dest) {
            Ok(()) => Ok(Image {
                root: dest,
                manifest,
            }),
            Err(source) => {
                let _ = fs::remove_dir_all(&staged);
                // Lost a race against an identical build: theirs is as good as ours.
                self.load(&dest, &manifest.key)
                    .ok_or(ImageError::Io { path: dest, source })
            }
        }
    }
}

/// The marker's contents for an image with content key `key` and manifest hash `manifest_sha`.
fn marker_text(key: &str, manifest_sha: &str) -> String {
    format!("ditto-image {FORMAT_VERSION}\nkey {key}\nmanifest-sha256 {manifest_sha}\n")
}

/// Checks the entry at `dir` against `key`; the error says why it is unusable.
fn validate(dir: &Path, key: &str) -> Result<Manifest, String> {
    let marker = fs::read_to_string(dir.join(MARKER_FILE)).map_err(|e| format!("marker: {e}"))?;
    let mpath = dir.join(MANIFEST_FILE);
    let json = fs::read(&mpath).map_err(|e| format!("manifest: {e}"))?;
    if marker != marker_text(key, &sha256_hex(&json)) {
        return Err("marker does not match key and manifest".into());
    }
    let manifest: Manifest = serde_json::from_slice(&json).map_err(|e| format!("manifest: {e}"))?;
    if manifest.key != key || manifest.format != FORMAT_VERSION {
        return Err("manifest is for another key or format".into());
    }
    Ok(manifest)
}

/// Removes a file, symlink or directory tree.
fn remove_any(path: &Path) -> Result<(), ImageError> {
    let meta = fs::symlink_metadata(path).at(path)?;
    if meta.is_dir() {
        fs::remove_dir_all(path).at(path)
    } else {
        fs::remove_file(path).at(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::Manifest;

    fn manifest(name: &str, key: &str) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            name: name.into(),
            recipe_version: 1,
            recipe_hash: "r".into(),
            key: key.into(),
            recipe_key: key.into(),
            entry: "/bin/x".into(),
            args: vec![],
            env: Default::default(),
            ports: vec![],
            writable: vec![],
            packages: vec![],
            user_files: vec![],
            host_libraries: vec![],
            tree_sha256: "t".into(),
        }
    }

    #[test]
    fn commit_load_pointer_and_corruption() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path().to_path_buf()).unwrap();
        let key = "0123456789abcdef0123";
        let st = s.staging("x").unwrap();
        fs::write(st.path().join("file"), b"1").unwrap();
        let img = s.commit(st, manifest("x", key)).unwrap();
        assert_eq!(img.root, t.path().join("images/x-0123456789abcdef"));
        assert!(s.load(&img.root, key).is_some());
        assert!(s.load(&img.root, "ffff").is_none());
        assert!(s.current("x").is_none());
        s.set_current("x", &img.root).unwrap();
        assert_eq!(s.current("x").unwrap().root, img.root);

        // A changed manifest no longer matches the marker.
        let m = img.root.join(MANIFEST_FILE);
        let mut text = fs::read_to_string(&m).unwrap();
        text.push(' ');
        fs::write(&m, &text).unwrap();
        assert!(s.load(&img.root, key).is_none());
        assert!(s.current("x").is_none());

        // Committing again replaces the corrupt entry.
        let st = s.staging("x").unwrap();
        let img2 = s.commit(st, manifest("x", key)).unwrap();
        assert_eq!(img2.root, img.root);
        assert!(s.load(&img.root, key).is_some());
        assert!(!img.root.join("file").exists());

        fs::remove_file(img.root.join(MARKER_FILE)).unwrap();
        assert!(s.load(&img.root, key).is_none());

        // No staging directories are left behind.
        let leftovers: Vec<_> = fs::read_dir(s.images_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
