//! File-system helpers: hashing, path resolution confined to an image root, tree copy.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{ImageError, IoContext};

/// Lower-case hex of a byte string.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// sha256 of a byte string, as hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// sha256 of a file's contents, as hex; streams, so large files do not sit in memory.
pub(crate) fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut f = fs::File::open(path).at(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Splits an absolute image path ("/etc/redis/x.conf") into its normal components, refusing
/// anything that could leave the root or is ambiguous ("..", relative paths, empty).
pub(crate) fn image_rel(path: &str) -> Result<PathBuf, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    let mut rel = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => rel.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("{path:?} contains \"..\""));
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(format!("{path:?} names the root itself"));
    }
    Ok(rel)
}

/// Where an absolute image path resolves to, the way the guest sees it: symlinks are followed,
/// absolute link targets and ".." are confined to `root` (like openat2's RESOLVE_IN_ROOT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// The path on the host.
    pub host: PathBuf,
    /// The canonical path inside the image, starting with "/".
    pub inner: String,
}

/// Resolves `path` inside `root`, following symlinks; `None` when it does not exist (or a
/// symlink loop). Works with `root == "/"` for host lookups too.
pub(crate) fn resolve_in_root(root: &Path, path: &str) -> Option<Resolved> {
    // Components still to walk, in reverse so that pushing a link's target is cheap.
    let mut todo: Vec<String> = split_rev(path);
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let mut host = root.to_path_buf();
        host.extend(done.iter());
        host.push(&c);
        let meta = fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                return None;
            }
            let target = fs::read_link(&host).ok()?;
            let target = target.to_str()?;
            if target.starts_with('/') {
                done.clear();
            }
            todo.extend(split_rev(target));
        } else {
            // A file in the middle of a path is ENOTDIR for the kernel, even before a "..".
            if !meta.is_dir() && todo.iter().any(|t| !t.is_empty()) {
                return None;
            }
            done.push(c);
        }
    }
    let mut host = root.to_path_buf();
    host.extend(done.iter());
    Some(Resolved {
        host,
        inner: format!("/{}", done.join("/")),
    })
}

/// The components of a path in reverse order (for use as a stack).
fn split_rev(path: &str) -> Vec<String> {
    path.split('/').rev().map(str::to_owned).collect()
}

/// Lexically normalises an absolute link target into components, clamping ".." at the root.
pub(crate) fn normalize_components(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// The relative link text that, placed in directory `dir` (components inside the root),
/// reaches the absolute target `target` (components inside the root).
pub(crate) fn relative_link(dir: &[&str], target: &[&str]) -> String {
    let common = dir.iter().zip(target).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; dir.len() - common];
    parts.extend_from_slice(&target[common..]);
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

/// Names at the top of an image root that are bookkeeping, not image content.
pub(crate) fn is_bookkeeping(rel: &Path) -> bool {
    rel == Path::new(super::MANIFEST_FILE) || rel == Path::new(super::MARKER_FILE)
}

/// A hash over a whole tree: every path, its type, permission bits, and the contents of files or
/// targets of symlinks, in sorted order. Owners and times are left out because they depend on
/// who built the image and when, not on what is in it.
pub(crate) fn tree_hash(root: &Path) -> Result<String, ImageError> {
    let mut h = Sha256::new();
    hash_dir(root, Path::new(""), &mut h)?;
    Ok(hex(&h.finalize()))
}

fn hash_dir(root: &Path, rel: &Path, h: &mut Sha256) -> Result<(), ImageError> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .at(&dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .at(&dir)?;
    entries.sort();
    for name in entries {
        let rel = rel.join(&name);
        if is_bookkeeping(&rel) {
            continue;
        }
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).at(&path)?;
        let mode = meta.mode() & 0o7777;
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&path).at(&path)?;
            h.update(b"l\0");
            h.update(target.as_os_str().as_encoded_bytes());
        } else if ft.is_dir() {
            h.update(format!("d {mode:o}\0").as_bytes());
            hash_dir(root, &rel, h)?;
        } else if ft.is_file() {
            h.update(format!("f {mode:o} {}\0", sha256_file(&path)?).as_bytes());
        } else {
            // Device nodes and fifos never come out of dpkg-deb -x for our packages; record
            // their presence so they at least change the hash.
            h.update(format!("o {mode:o}\0").as_bytes());
        }
        h.update([0]);
    }
    Ok(())
}

/// Copies the tree at `src` to `dst` (which must exist), keeping symlinks as symlinks and
/// permission bits, skipping the bookkeeping files at the top.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<(), ImageError> {
    copy_dir(src, dst, Path::new(""))
}

fn copy_dir(src_root: &Path, dst_root: &Path, rel: &Path) -> Result<(), ImageError> {
    let dir = src_root.join(rel);
    for entry in fs::read_dir(&dir).at(&dir)? {
        let entry = entry.at(&dir)?;
        let rel = rel.join(entry.file_name());
        if is_bookkeeping(&rel) {
            continue;
        }
        let from = src_root.join(&rel);
        let to = dst_root.join(&rel);
        let meta = fs::symlink_metadata(&from).at(&from)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&from).at(&from)?;
            std::os::unix::fs::symlink(&target, &to).at(&to)?;
        } else if ft.is_dir() {
            fs::create_dir(&to).at(&to)?;
            copy_dir(src_root, dst_root, &rel)?;
            fs::set_permissions(&to, meta.permissions()).at(&to)?;
        } else if ft.is_file() {
            fs::copy(&from, &to).at(&to)?;
        }
    }
    Ok(())
}

/// Creates the directory `inner` (an absolute image path) and its parents inside `root`,
/// following symlinks the way the guest would (never out of the root). Returns its host path.
pub(crate) fn mkdirs_in_root(root: &Path, inner: &str) -> Result<PathBuf, ImageError> {
    let mut host = root.to_path_buf();
    let mut at = String::new();
    for c in inner.split('/').filter(|c| !c.is_empty() && *c != ".") {
        at = format!("{at}/{c}");
        match resolve_in_root(root, &at) {
            Some(r) if r.host.is_dir() => host = r.host,
            Some(r) => {
                return Err(ImageError::Io {
                    path: r.host,
                    source: std::io::Error::other(format!("{at} is not a directory")),
                })
            }
            None => {
                host.push(c);
                fs::create_dir(&host).at(&host)?;
            }
        }
    }
    Ok(host)
}

/// Writes `contents` at the absolute image path `inner` with `mode`, creating parent
/// directories inside `root`. A symlink already there is replaced, not written through.
pub(crate) fn write_in_root(
    root: &Path,
    inner: &str,
    contents: &[u8],
    mode: u32,
) -> Result<PathBuf, ImageError> {
    let rel = image_rel(inner).map_err(|reason| ImageError::Io {
        path: PathBuf::from(inner),
        source: std::io::Error::other(reason),
    })?;
    let name = rel.file_name().unwrap_or_default();
    let parent = rel
        .parent()
        .map(|p| format!("/{}", p.display()))
        .unwrap_or_default();
    let dest = mkdirs_in_root(root, &parent)?.join(name);
    write_file(&dest, contents, mode)?;
    Ok(dest)
}

/// Writes `contents` to `path` with `mode`, creating parent directories.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), ImageError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).at(parent)?;
    }
    // A package may have shipped a symlink here; replace it rather than write through it.
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(path).at(path)?;
    }
    fs::write(path, contents).at(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).at(path)
}

/// Writes a file so that readers see either the old or the new contents, never a part.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), ImageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).at(dir)?;
    std::io::Write::write_all(&mut tmp, contents).at(tmp.path())?;
    tmp.as_file().sync_all().at(path)?;
    tmp.persist(path).map_err(|e| ImageError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_rel_refuses_escapes() {
        assert_eq!(image_rel("/etc/x").unwrap(), PathBuf::from("etc/x"));
        assert_eq!(image_rel("/./a//b").unwrap(), PathBuf::from("a/b"));
        assert!(image_rel("etc/x").is_err());
        assert!(image_rel("/a/../../x").is_err());
        assert!(image_rel("/").is_err());
    }

    #[test]
    fn relative_links() {
        assert_eq!(
            relative_link(&["usr", "lib64"], &["lib", "x86_64-linux-gnu", "ld.so"]),
            "../../lib/x86_64-linux-gnu/ld.so"
        );
        assert_eq!(
            relative_link(&["usr", "lib64"], &["usr", "lib", "x"]),
            "../lib/x"
        );
        assert_eq!(relative_link(&["a"], &["a"]), ".");
        assert_eq!(relative_link(&[], &["etc", "x"]), "etc/x");
        assert_eq!(normalize_components("/a/./b/../../../c"), vec!["c"]);
    }

    #[test]
    fn resolve_follows_links_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("usr/lib")).unwrap();
        fs::write(r.join("usr/lib/libx.so"), b"x").unwrap();
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
        // An absolute link means "from the image root", not from the host's root.
        std::os::unix::fs::symlink("/lib/libx.so", r.join("usr/lib/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../lib/libx.so", r.join("usr/lib/up")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        let want = Resolved {
            host: r.join("usr/lib/libx.so"),
            inner: "/usr/lib/libx.so".into(),
        };
        assert_eq!(resolve_in_root(r, "/lib/libx.so").unwrap(), want);
        assert_eq!(resolve_in_root(r, "/usr/lib/abs").unwrap(), want);
        assert_eq!(resolve_in_root(r, "/usr/lib/up").unwrap(), want);
        assert!(resolve_in_root(r, "/loop").is_none());
        assert!(resolve_in_root(r, "/lib/missing").is_none());
        assert!(resolve_in_root(r, "/usr/lib/libx.so/x").is_none());
    }

    #[test]
    fn writes_stay_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("root");
        fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
        // A link that would leave the root on the host means the root itself in the guest.
        std::os::unix::fs::symlink("../../..", r.join("up")).unwrap();
        let p = write_in_root(&r, "/lib/x/y.conf", b"y", 0o600).unwrap();
        assert_eq!(p, r.join("usr/lib/x/y.conf"));
        let p = write_in_root(&r, "/up/etc/z", b"z", 0o644).unwrap();
        assert_eq!(p, r.join("etc/z"));
        assert_eq!(
            fs::metadata(r.join("usr/lib/x/y.conf")).unwrap().mode() & 0o777,
            0o600
        );
        assert!(write_in_root(&r, "/lib/x/y.conf/w", b"", 0o644).is_err());
    }

    #[test]
    fn tree_hash_sees_contents_modes_and_links() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir(r.join("d")).unwrap();
        write_file(&r.join("d/f"), b"one", 0o644).unwrap();
        let h1 = tree_hash(r).unwrap();
        // Bookkeeping files do not count.
        fs::write(r.join(crate::image::MARKER_FILE), b"m").unwrap();
        assert_eq!(tree_hash(r).unwrap(), h1);
        write_file(&r.join("d/f"), b"one", 0o755).unwrap();
        let h2 = tree_hash(r).unwrap();
        assert_ne!(h1, h2);
        std::os::unix::fs::symlink("d/f", r.join("l")).unwrap();
        assert_ne!(tree_hash(r).unwrap(), h2);

        let copy = tempfile::tempdir().unwrap();
        copy_tree(r, copy.path()).unwrap();
        assert!(!copy.path().join(crate::image::MARKER_FILE).exists());
        assert_eq!(tree_hash(copy.path()).unwrap(), tree_hash(r).unwrap());
    }
}
