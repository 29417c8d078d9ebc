//! The DT_NEEDED closure check: every ELF the image can run finds its interpreter and all its
//! shared libraries inside the image, searched the way ld.so searches.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::io::Read;
use std::path::Path;

use goblin::elf::Elf;

use super::error::{ImageError, IoContext};
use super::fsutil::{resolve_in_root, Resolved};

/// Directories ld.so searches when neither the cache nor RPATH/RUNPATH name the library.
/// Debian's glibc puts the multiarch directories first; an image has no ld.so.cache.
pub(crate) const IMAGE_LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// Where libraries are looked up on the host for `add_files`: the image directories plus the
/// usual local ones.
pub(crate) const HOST_LIB_DIRS: &[&str] = &[
    "/usr/local/lib/x86_64-linux-gnu",
    "/usr/local/lib",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// Directories whose programs are checked besides the entry.
const BIN_DIRS: &[&str] = &["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"];

const EM_X86_64: u16 = 62;

/// What the loader needs to know about one ELF file.
#[derive(Debug, Clone, Default)]
pub(crate) struct ElfInfo {
    /// PT_INTERP.
    pub interp: Option<String>,
    /// DT_NEEDED entries.
    pub needed: Vec<String>,
    /// DT_RUNPATH entries, split at ':'.
    pub runpath: Vec<String>,
    /// DT_RPATH entries, split at ':'.
    pub rpath: Vec<String>,
    /// 64-bit x86 (the only kind ld-linux-x86-64 loads).
    pub x86_64: bool,
    /// Libraries it loads with dlopen that are as necessary as DT_NEEDED ones
    /// (see [`DLOPENED`]).
    pub dlopens: Vec<String>,
}

/// Libraries a library dlopens on paths every program of a kind takes, by the SONAME of the
/// library that does it: glibc loads libgcc_s.so.1 to unwind the stack in pthread_exit and
/// pthread_cancel, and aborts ("libgcc_s.so.1 must be installed for pthread_exit to work")
/// without it. Found by running nginx with its thread pool.
const DLOPENED: &[(&str, &str)] = &[("libc.so.6", "libgcc_s.so.1")];

/// Reads `path` as an ELF file; `Ok(None)` when it is not one (a script, a text file).
pub(crate) fn read_elf(path: &Path) -> Result<Option<ElfInfo>, ImageError> {
    let mut f = fs::File::open(path).at(path)?;
    let mut magic = [0u8; 4];
    // Short files are not ELF; read_exact's error for them is not worth reporting.
    if f.read_exact(&mut magic).is_err() || magic != *b"\x7fELF" {
        return Ok(None);
    }
    let bytes = fs::read(path).at(path)?;
    let elf = Elf::parse(&bytes).map_err(|e| ImageError::BadElf {
        path: path.to_path_buf(),
        reason: format!("cannot parse ELF: {e}"),
    })?;
    let split = |v: &[&str]| -> Vec<String> {
        v.iter()
            .flat_map(|s| s.split(':'))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    Ok(Some(ElfInfo {
        interp: elf.interpreter.map(str::to_owned),
        needed: elf.libraries.iter().map(|s| (*s).to_owned()).collect(),
        runpath: split(&elf.runpaths),
        rpath: split(&elf.rpaths),
        x86_64: elf.is_64 && elf.header.e_machine == EM_X86_64,
        dlopens: DLOPENED
            .iter()
            .filter(|(soname, _)| elf.soname == Some(*soname))
            .map(|(_, lib)| (*lib).to_owned())
            .collect(),
    }))
}

/// Expands the dynamic string tokens ld.so knows in a search directory.
fn expand(dir: &str, origin: &str) -> String {
    dir.replace("${ORIGIN}", origin)
        .replace("$ORIGIN", origin)
        .replace("${LIB}", "lib/x86_64-linux-gnu")
        .replace("$LIB", "lib/x86_64-linux-gnu")
        .replace("${PLATFORM}", "x86_64")
        .replace("$PLATFORM", "x86_64")
}

/// The directory part of an absolute in-root path ("/usr/bin/x" -> "/usr/bin").
fn dir_of(inner: &str) -> &str {
    match inner.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &inner[..i],
    }
}

/// Finds library `name`, needed by an ELF whose canonical path in `root` is `needer`, the way
/// ld.so does: DT_RPATH (only without DT_RUNPATH), DT_RUNPATH, then `default_dirs`. Candidates
/// of the wrong class or machine are skipped, as ld.so skips them.
pub(crate) fn find_library(
    root: &Path,
    name: &str,
    needer: &ElfInfo,
    needer_path: &str,
    default_dirs: &[&str],
) -> Result<Option<Resolved>, ImageError> {
    if name.contains('/') {
        // A DT_NEEDED with a slash is a path, used as is (relative ones from the cwd, which
        // for a guest is "/").
        let p = if name.starts_with('/') {
            name.to_owned()
        } else {
            format!("/{name}")
        };
        return Ok(resolve_in_root(root, &p).filter(|r| r.host.is_file()));
    }
    let origin = dir_of(needer_path);
    let rpath: &[String] = if needer.runpath.is_empty() {
        &needer.rpath
    } else {
        &[]
    };
    let dirs = rpath
        .iter()
        .chain(&needer.runpath)
        .map(|d| expand(d, origin))
        .chain(default_dirs.iter().map(|d| (*d).to_owned()));
    for dir in dirs {
        // Relative search directories are relative to the process's cwd: unknowable here.
        if !dir.starts_with('/') {
            continue;
        }
        let Some(found) = resolve_in_root(root, &format!("{dir}/{name}")) else {
            continue;
        };
        if !found.host.is_file() {
            continue;
        }
        if read_elf(&found.host)?.is_some_and(|e| e.x86_64) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The result of a successful closure check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    /// Every ELF file checked (programs, libraries, interpreters), by canonical path inside
    /// the image.
    pub files: BTreeSet<String>,
    /// For each library file, one ELF that needs it (for messages and debugging).
    pub needed_by: BTreeMap<String, String>,
}

/// Checks that the entry (if given) and every ELF program in /usr/bin, /usr/sbin,
/// /usr/local/bin and /usr/local/sbin of the image at `root` find their interpreter and all
/// their shared libraries, transitively, inside the image.
///
/// Fails with [`ImageError::MissingLibrary`] or [`ImageError::MissingInterpreter`] naming what
/// is missing and which ELF needs it, or [`ImageError::MissingEntry`].
pub fn check_closure(root: &Path, entry: Option<&str>) -> Result<Closure, ImageError> {
    let mut queue: VecDeque<Resolved> = VecDeque::new();
    if let Some(entry) = entry {
        let r = resolve_in_root(root, entry)
            .filter(|r| r.host.is_file())
            .ok_or_else(|| ImageError::MissingEntry {
                entry: entry.to_owned(),
            })?;
        if read_elf(&r.host)?.is_none() {
            return Err(ImageError::BadElf {
                path: r.host,
                reason: format!("the entry {entry} is not an ELF executable"),
            });
        }
        queue.push_back(r);
    }
    for dir in BIN_DIRS {
        let Some(d) = resolve_in_root(root, dir).filter(|d| d.host.is_dir()) else {
            continue;
        };
        let mut names: Vec<String> = fs::read_dir(&d.host)
            .at(&d.host)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        for n in names {
            // Dangling links (say, to an alternative that was never installed) are not
            // programs the image can run; they are not the closure's business.
            if let Some(r) = resolve_in_root(root, &format!("{}/{n}", d.inner)) {
                if r.host.is_file() {
                    queue.push_back(r);
                }
            }
        }
    }

    let mut closure = Closure::default();
    while let Some(item) = queue.pop_front() {
        if !closure.files.insert(item.inner.clone()) {
            continue;
        }
        let Some(info) = read_elf(&item.host)? else {
            continue;
        };
        if !info.x86_64 {
            tracing::debug!(path = %item.inner, "not an x86-64 ELF; not checked");
            continue;
        }
        if let Some(interp) = &info.interp {
            let r = resolve_in_root(root, interp)
                .filter(|r| r.host.is_file())
                .ok_or_else(|| ImageError::MissingInterpreter {
                    interpreter: interp.clone(),
                    needed_by: item.inner.clone(),
                })?;
            closure
                .needed_by
                .entry(r.inner.clone())
                .or_insert_with(|| item.inner.clone());
            queue.push_back(r);
        }
        let needed = info.needed.iter().map(|l| (l, "")).chain(
            info.dlopens
                .iter()
                .map(|l| (l, " (which loads it with dlopen)")),
        );
        for (lib, how) in needed {
            let r =
                find_library(root, lib, &info, &item.inner, IMAGE_LIB_DIRS)?.ok_or_else(|| {
                    ImageError::MissingLibrary {
                        library: lib.clone(),
                        needed_by: format!("{}{how}", item.inner),
                    }
                })?;
            closure
                .needed_by
                .entry(r.inner.clone())
                .or_insert_with(|| item.inner.clone());
            queue.push_back(r);
        }
    }
    Ok(closure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expand() {
        assert_eq!(expand("$ORIGIN/../lib", "/opt/x/bin"), "/opt/x/bin/../lib");
        assert_eq!(expand("${ORIGIN}/$LIB", "/a"), "/a/lib/x86_64-linux-gnu");
        assert_eq!(dir_of("/usr/bin/x"), "/usr/bin");
        assert_eq!(dir_of("/x"), "/");
    }

    #[test]
    fn non_elf_files_are_not_elf() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("script");
        fs::write(&p, b"#!/bin/sh\necho hi\n").unwrap();
        assert!(read_elf(&p).unwrap().is_none());
        fs::write(&p, b"\x7fEL").unwrap();
        assert!(read_elf(&p).unwrap().is_none());
        fs::write(&p, b"\x7fELF garbage").unwrap();
        assert!(matches!(read_elf(&p), Err(ImageError::BadElf { .. })));
    }

    /// Copies a host file into `root` at the same path.
    fn copy_in(root: &Path, host: &str, inner: &str) {
        let dest = root.join(inner.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(fs::canonicalize(host).unwrap(), dest).unwrap();
    }

    #[test]
    fn synthetic_root_without_libc_fails_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        crate::image::extract::prepare_root(r).unwrap();
        copy_in(r, "/bin/sh", "/usr/bin/sh");
        let e = check_closure(r, Some("/bin/sh")).unwrap_err();
        match &e {
            ImageError::MissingInterpreter {
                interpreter,
                needed_by,
            } => {
                assert_eq!(interpreter, "/lib64/ld-linux-x86-64.so.2");
                assert_eq!(needed_by, "/usr/bin/sh");
            }
            other => panic!("{other}"),
        }
        copy_in(
            r,
            "/lib64/ld-linux-x86-64.so.2",
            "/lib64/ld-linux-x86-64.so.2",
        );
        let e = check_closure(r, Some("/bin/sh")).unwrap_err();
        match &e {
            ImageError::MissingLibrary { library, needed_by } => {
                assert_eq!(library, "libc.so.6");
                assert_eq!(needed_by, "/usr/bin/sh");
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("libc.so.6") && e.to_string().contains("/usr/bin/sh"));
        copy_in(
            r,
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libc.so.6",
        );
        let e = check_closure(r, Some("/bin/sh")).unwrap_err();
        match &e {
            ImageError::MissingLibrary { library, needed_by } => {
                assert_eq!(library, "libgcc_s.so.1");
                assert!(needed_by.contains("libc.so.6"), "{needed_by}");
            }
            other => panic!("{other}"),
        }
        copy_in(
            r,
            "/lib/x86_64-linux-gnu/libgcc_s.so.1",
            "/lib/x86_64-linux-gnu/libgcc_s.so.1",
        );
        let c = check_closure(r, Some("/bin/sh")).unwrap();
        assert!(
            c.files.contains("/usr/lib/x86_64-linux-gnu/libc.so.6"),
            "{c:?}"
        );
        assert!(c.files.contains("/usr/lib64/ld-linux-x86-64.so.2"), "{c:?}");
    }

    #[test]
    fn missing_entry_is_reported() {
        let t = tempfile::tempdir().unwrap();
        let e = check_closure(t.path(), Some("/bin/nothing")).unwrap_err();
        assert!(e.to_string().contains("/bin/nothing"), "{e}");
    }
}
