//! Finding and fetching .deb files with apt (the host's sources, ditto's own lists), without
//! installing anything.

use std::fs;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::Path;
use std::process::{Output, Stdio};

use serde::{Deserialize, Serialize};

use super::error::{ImageError, IoContext};
use super::fsutil::sha256_file;
use super::lists::{one_line, AptLists};
use super::progress::Progress;

/// One .deb the archive index offers for a package: apt's candidate version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DebRef {
    /// The package name as the recipe wrote it.
    pub package: String,
    /// The version (epoch included), decoded from the file name.
    pub version: String,
    /// The architecture ("amd64", "all").
    pub arch: String,
    /// apt's local file name for it ("redis-server_5%3a7.0.15-1~deb12u10_amd64.deb").
    pub file: String,
    /// Where apt would fetch it from.
    pub uri: String,
    /// sha256 from the index; `None` when the index only has weaker hashes.
    pub sha256: Option<String>,
}

/// Runs apt-get on ditto's lists in `cwd`.
fn apt_get(lists: &AptLists, args: &[&str], cwd: &Path) -> Result<Output, ImageError> {
    lists
        .command()
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::Spawn {
            program: "apt-get".into(),
            source,
        })
}

/// Asks apt which file it would download for each package, without downloading.
///
/// Runs in an empty directory because `apt-get download --print-uris` silently leaves out
/// packages whose file is already in the current directory.
pub(crate) fn resolve(lists: &AptLists, packages: &[String]) -> Result<Vec<DebRef>, ImageError> {
    let empty = tempfile::tempdir().at(&std::env::temp_dir())?;
    let mut args = vec!["download", "--print-uris"];
    args.extend(packages.iter().map(String::as_str));
    let out = apt_get(lists, &args, empty.path())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<DebRef> = stdout.lines().filter_map(parse_uri_line).collect();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for p in packages {
        match lines.iter().find(|d| d.package == base_name(p)) {
            Some(d) => found.push(DebRef {
                package: p.clone(),
                ..d.clone()
            }),
            None => missing.push(p.as_str()),
        }
    }
    if !missing.is_empty() || !out.status.success() {
        let package = if missing.is_empty() {
            packages.join(", ")
        } else {
            missing.join(", ")
        };
        let mut stderr = if stderr.trim().is_empty() {
            format!("apt-get {} offers no file for it", out.status)
        } else {
            one_line(&stderr, out.status)
        };
        if stderr.contains("Unable to locate package") && lists.is_fresh() {
            stderr.push_str(" (the package lists are up to date; check the package name)");
        }
        return Err(ImageError::Download { package, stderr });
    }
    Ok(found)
}

/// The package name without an ":arch" qualifier.
fn base_name(p: &str) -> &str {
    p.split(':').next().unwrap_or(p)
}

/// Parses one line of `apt-get download --print-uris`:
/// `'URI' FILE SIZE HASH`, where HASH is `SHA256:hex` (or another algorithm).
pub(crate) fn parse_uri_line(line: &str) -> Option<DebRef> {
    let mut it = line.split_whitespace();
    let uri = it.next()?.trim_matches('\'').to_owned();
    let file = it.next()?.to_owned();
    let _size = it.next()?;
    let sha256 = it
        .next()
        .and_then(|h| h.strip_prefix("SHA256:"))
        .map(str::to_ascii_lowercase);
    let (package, version, arch) = parse_deb_name(&file)?;
    Some(DebRef {
        package,
        version,
        arch,
        file,
        uri,
        sha256,
    })
}

/// Splits apt's file name `NAME_VERSION_ARCH.deb` into its parts, decoding the `%3a` that apt
/// writes for the epoch's colon.
pub(crate) fn parse_deb_name(file: &str) -> Option<(String, String, String)> {
    let stem = file.strip_suffix(".deb")?;
    let mut parts = stem.splitn(3, '_');
    let name = parts.next()?;
    let version = parts.next()?;
    let arch = parts.next()?;
    if name.is_empty() || version.is_empty() || arch.is_empty() || arch.contains('_') {
        return None;
    }
    Some((name.to_owned(), percent_decode(version)?, arch.to_owned()))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hexs = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hexs, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Makes sure `debs_dir` holds each package's .deb with the right hash, downloading only the
/// ones not already there, and returns their sha256s in order.
///
/// All missing files are fetched by one `apt-get download` (apt-get spends about a second
/// loading its package lists on every start); its "Get:" lines drive the progress report. The
/// download goes to a private temporary directory and each file is renamed into place after its
/// hash check, so concurrent builds never see a half-written .deb.
pub(crate) fn fetch_all(
    lists: &AptLists,
    debs: &[DebRef],
    debs_dir: &Path,
    progress: &Progress,
) -> Result<Vec<String>, ImageError> {
    let mut hashes: Vec<Option<String>> = Vec::with_capacity(debs.len());
    for deb in debs {
        let dest = debs_dir.join(&deb.file);
        let mut have = None;
        if dest.is_file() {
            let h = sha256_file(&dest)?;
            match &deb.sha256 {
                Some(want) if *want != h => {
                    tracing::warn!(file = %dest.display(), "cached .deb has the wrong hash; downloading again");
                }
                _ => have = Some(h),
            }
        }
        hashes.push(have);
    }
    let missing: Vec<&DebRef> = debs
        .iter()
        .zip(&hashes)
        .filter(|(_, h)| h.is_none())
        .map(|(d, _)| d)
        .collect();
    if missing.is_empty() {
        progress.plan(1);
        progress.step(&format!("{} packages already downloaded", debs.len()));
    } else {
        progress.plan(missing.len() as u64);
        download(lists, &missing, debs_dir, progress)?;
    }
    debs.iter()
        .zip(hashes)
        .map(|(d, h)| match h {
            Some(h) => Ok(h),
            None => sha256_file(&debs_dir.join(&d.file)),
        })
        .collect()
}

/// Downloads `debs` into `debs_dir` with one apt-get run.
fn download(
    lists: &AptLists,
    debs: &[&DebRef],
    debs_dir: &Path,
    progress: &Progress,
) -> Result<(), ImageError> {
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(debs_dir)
        .at(debs_dir)?;
    let mut errors = tempfile::tempfile().at(&std::env::temp_dir())?;
    let mut child = lists
        .command()
        .arg("download")
        .args(
            debs.iter()
                .map(|d| format!("{}={}", base_name(&d.package), d.version)),
        )
        .current_dir(tmp.path())
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(errors.try_clone().at(tmp.path())?))
        .spawn()
        .map_err(|source| ImageError::Spawn {
            program: "apt-get".into(),
            source,
        })?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("Get:") {
                let pkg = debs
                    .iter()
                    .find(|d| line.contains(&format!(" {} ", base_name(&d.package))))
                    .map_or("a package", |d| d.package.as_str());
                progress.step(&format!("downloaded {pkg}"));
            }
        }
    }
    let status = child.wait().at(tmp.path())?;
    let mut stderr = String::new();
    let _ = errors.rewind();
    let _ = errors.read_to_string(&mut stderr);
    for deb in debs {
        let got = tmp.path().join(&deb.file);
        if !got.is_file() {
            return Err(ImageError::Download {
                package: deb.package.clone(),
                stderr: if stderr.trim().is_empty() {
                    format!("apt-get {status} did not produce {}", deb.file)
                } else {
                    one_line(&stderr, status)
                },
            });
        }
        let have = sha256_file(&got)?;
        if let Some(want) = &deb.sha256 {
            if *want != have {
                return Err(ImageError::HashMismatch {
                    package: deb.package.clone(),
                    file: got,
                    expected: want.clone(),
                    actual: have,
                });
            }
        }
        let dest = debs_dir.join(&deb.file);
        fs::rename(&got, &dest).at(&dest)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_print_uris_lines() {
        let l = "'http://deb.debian.org/debian-security/pool/updates/main/r/redis/redis-server_7.0.15-1%7edeb12u10_amd64.deb' redis-server_5%3a7.0.15-1~deb12u10_amd64.deb 73908 SHA256:784E17b51024ff878fd7d709a68346658fa9b21f6de740cb75e474f28790971c";
        let d = parse_uri_line(l).unwrap();
        assert_eq!(d.package, "redis-server");
        assert_eq!(d.version, "5:7.0.15-1~deb12u10");
        assert_eq!(d.arch, "amd64");
        assert_eq!(d.file, "redis-server_5%3a7.0.15-1~deb12u10_amd64.deb");
        assert!(d.uri.starts_with("http://deb.debian.org/"));
        assert_eq!(
            d.sha256.as_deref(),
            Some("784e17b51024ff878fd7d709a68346658fa9b21f6de740cb75e474f28790971c")
        );
        let weak = parse_uri_line("'http://x/a_1_all.deb' a_1_all.deb 10 MD5Sum:00").unwrap();
        assert_eq!(weak.sha256, None);
        assert!(parse_uri_line("E: Unable to locate package x").is_none());
        assert!(parse_uri_line("").is_none());
    }

    #[test]
    fn parses_deb_names() {
        assert_eq!(
            parse_deb_name("libc6_2.36-9+deb12u14_amd64.deb"),
            Some(("libc6".into(), "2.36-9+deb12u14".into(), "amd64".into()))
        );
        assert_eq!(
            parse_deb_name("busybox-static_1%3a1.35.0-4_amd64.deb")
                .unwrap()
                .1,
            "1:1.35.0-4"
        );
        assert_eq!(parse_deb_name("x_1_amd64.tar"), None);
        assert_eq!(parse_deb_name("x_1.deb"), None);
        assert_eq!(parse_deb_name("x_1%zz_amd64.deb"), None);
        assert_eq!(parse_deb_name("x_1%3_amd64.deb"), None);
    }

    #[test]
    fn arch_qualifier_is_not_part_of_the_name() {
        assert_eq!(base_name("libc6:amd64"), "libc6");
        assert_eq!(base_name("libc6"), "libc6");
    }
}
