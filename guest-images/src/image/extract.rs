//! Unpacking .deb files into a staging root.
//!
//! Debian 12 has a merged /usr: /bin, /sbin, /lib and /lib64 are symlinks into /usr, yet many
//! packages still ship files under /lib or /bin. The staging root gets those symlinks first.
//! `dpkg-deb -x` replaces such a symlink with a real directory as soon as a package ships
//! `./lib/` (checked on bookworm), which would split the tree in two, so the files are unpacked
//! with `dpkg-deb --fsys-tarfile | tar -x --keep-directory-symlink` instead: the same archive
//! contents, written through the existing symlinks.

use std::fs;
use std::io::{Read, Seek};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};

use super::error::{ImageError, IoContext};
use super::fsutil::{normalize_components, relative_link};

/// The usrmerge symlinks a bookworm root has: (link at the top, directory under usr).
const USRMERGE: &[(&str, &str)] = &[
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
];

/// Creates the merged-/usr skeleton in an empty staging root.
pub(crate) fn prepare_root(root: &Path) -> Result<(), ImageError> {
    for (link, dir) in USRMERGE {
        let d = root.join(dir);
        fs::create_dir_all(&d).at(&d)?;
        let l = root.join(link);
        symlink(dir, &l).at(&l)?;
    }
    Ok(())
}

/// Unpacks the file system contents of one .deb into `root` (maintainer scripts are not run).
pub(crate) fn extract(deb: &Path, root: &Path) -> Result<(), ImageError> {
    let failed = |stderr: String| ImageError::Extract {
        deb: deb.to_path_buf(),
        stderr,
    };
    // dpkg-deb's stderr goes to a file, not a pipe: nobody reads it while tar runs, and a full
    // pipe would stall dpkg-deb.
    let mut dpkg_err = tempfile::tempfile().at(&std::env::temp_dir())?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(dpkg_err.try_clone().at(deb)?))
        .spawn()
        .map_err(|source| ImageError::Spawn {
            program: "dpkg-deb".into(),
            source,
        })?;
    let Some(tarball) = dpkg.stdout.take() else {
        let _ = dpkg.kill();
        let _ = dpkg.wait();
        return Err(failed("dpkg-deb gave no output pipe".into()));
    };
    // --no-same-owner: files belong to whoever builds, root or not; the guest's view of owners
    // is the VMM's business. -p keeps the packaged permission bits exactly.
    let tar = Command::new("tar")
        .args([
            "-x",
            "--keep-directory-symlink",
            "--no-same-owner",
            "-p",
            "-C",
        ])
        .arg(root)
        .stdin(Stdio::from(tarball))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let dpkg_status = dpkg.wait().at(deb)?;
    let tar = tar.map_err(|source| ImageError::Spawn {
        program: "tar".into(),
        source,
    })?;
    if !dpkg_status.success() || !tar.status.success() {
        let mut msg = String::new();
        let _ = dpkg_err.rewind();
        let _ = dpkg_err.read_to_string(&mut msg);
        msg.push_str(&String::from_utf8_lossy(&tar.stderr));
        let msg = msg.trim();
        return Err(failed(if msg.is_empty() {
            format!("dpkg-deb {dpkg_status}, tar {}", tar.status)
        } else {
            msg.to_owned()
        }));
    }
    Ok(())
}

/// Rewrites every absolute symlink under `root` as a relative one.
///
/// Inside the guest an absolute target means "from the image root", but on the host it means
/// the host's own files: without this, `/lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/…`
/// would make host-side checks (and the next tar run) silently use or write host files.
pub(crate) fn relativize_symlinks(root: &Path) -> Result<(), ImageError> {
    relativize_dir(root, &mut Vec::new())
}

fn relativize_dir(root: &Path, rel: &mut Vec<String>) -> Result<(), ImageError> {
    let mut dir = root.to_path_buf();
    dir.extend(rel.iter());
    for entry in fs::read_dir(&dir).at(&dir)? {
        let entry = entry.at(&dir)?;
        let path = entry.path();
        let ft = entry.file_type().at(&path)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if ft.is_dir() {
            rel.push(name);
            relativize_dir(root, rel)?;
            rel.pop();
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).at(&path)?;
            let Some(t) = target.to_str() else { continue };
            if t.starts_with('/') {
                let parent: Vec<&str> = rel.iter().map(String::as_str).collect();
                let new = relative_link(&parent, &normalize_components(t));
                fs::remove_file(&path).at(&path)?;
                symlink(&new, &path).at(&path)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_links_become_relative() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        prepare_root(r).unwrap();
        fs::create_dir_all(r.join("usr/lib/x86_64-linux-gnu")).unwrap();
        fs::write(r.join("usr/lib/x86_64-linux-gnu/ld.so"), b"x").unwrap();
        symlink("/lib/x86_64-linux-gnu/ld.so", r.join("usr/lib64/ld.so")).unwrap();
        symlink("/", r.join("usr/rootlink")).unwrap();
        relativize_symlinks(r).unwrap();
        assert_eq!(
            fs::read_link(r.join("usr/lib64/ld.so")).unwrap(),
            Path::new("../../lib/x86_64-linux-gnu/ld.so")
        );
        assert_eq!(fs::read(r.join("lib64/ld.so")).unwrap(), b"x");
        assert_eq!(
            fs::read_link(r.join("usr/rootlink")).unwrap(),
            Path::new("..")
        );
        // The usrmerge links were relative already and stay untouched.
        assert_eq!(fs::read_link(r.join("lib")).unwrap(), Path::new("usr/lib"));
    }

    #[test]
    fn extract_failure_names_the_deb() {
        let t = tempfile::tempdir().unwrap();
        let deb = t.path().join("broken_1_amd64.deb");
        fs::write(&deb, b"not a deb").unwrap();
        let e = extract(&deb, t.path()).unwrap_err().to_string();
        assert!(e.contains("broken_1_amd64.deb"), "{e}");
    }
}
