//! ditto's own apt package lists, so an image build does not depend on when the host last ran
//! `apt-get update`.
//!
//! ```text
//! <cache>/apt/lists/        Dir::State::Lists: the index files `apt-get update` fetches
//! <cache>/apt/cache/        Dir::Cache: apt's binary caches (kept off the host's)
//! <cache>/apt/status        Dir::State::status: empty, so the host's installed packages
//!                           never change which version apt picks
//! <cache>/apt/apt.conf      extra configuration (no update hooks, no AppStream metadata)
//! <cache>/apt/updated       stamp: its mtime is the last successful `apt-get update`
//! <cache>/apt/update.lock   held while updating, so concurrent builds update once
//! ```
//!
//! The sources are the host's (`/etc/apt/sources.list` and `sources.list.d`), with their keys:
//! signature checking stays exactly as the host configures it.

use std::cell::Cell;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use super::error::{ImageError, IoContext};
use super::fsutil::write_atomic;
use super::progress::Progress;

/// Lists older than this are refreshed before a build.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// How far in the future a stamp may lie (file-system timestamps are coarse) before it is taken
/// as a sign of a changed clock and the lists as stale.
const CLOCK_SLACK: Duration = Duration::from_secs(60);

/// Read after the host's configuration. The host's `apt-get update` hooks (PackageKit,
/// AppStream) act on the host's lists, not on these, so they are cleared; AppStream metadata
/// and translations are large and nothing here reads them.
const APT_CONF: &str = "\
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
Acquire::Languages \"none\";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled \"false\";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled \"false\";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled \"false\";
Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled \"false\";
";

/// Whether lists last updated at `updated` (`None`: never) must be refreshed at `now`.
pub(crate) fn is_stale(updated: Option<SystemTime>, now: SystemTime) -> bool {
    let Some(updated) = updated else {
        return true;
    };
    match now.duration_since(updated) {
        Ok(age) => age > MAX_AGE,
        Err(future) => future.duration() > CLOCK_SLACK,
    }
}

/// ditto's apt state directory in one cache.
pub(crate) struct AptLists {
    dir: PathBuf,
    /// Set once this process has run `apt-get update` (or seen another process finish one),
    /// so a build refreshes at most once.
    fresh: Cell<bool>,
}

impl AptLists {
    /// Opens (creating if needed) the apt state under `dir`.
    pub(crate) fn open(dir: PathBuf) -> Result<AptLists, ImageError> {
        let a = AptLists {
            dir,
            fresh: Cell::new(false),
        };
        for d in [
            a.lists_dir().join("partial"),
            a.cache_dir().join("archives").join("partial"),
        ] {
            fs::create_dir_all(&d).at(&d)?;
        }
        let status = a.dir.join("status");
        if !status.is_file() {
            write_atomic(&status, b"")?;
        }
        let conf = a.conf_file();
        if fs::read(&conf).ok().as_deref() != Some(APT_CONF.as_bytes()) {
            write_atomic(&conf, APT_CONF.as_bytes())?;
        }
        Ok(a)
    }

    /// Where the index files are.
    pub(crate) fn lists_dir(&self) -> PathBuf {
        self.dir.join("lists")
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    fn conf_file(&self) -> PathBuf {
        self.dir.join("apt.conf")
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("updated")
    }

    /// The options that make an apt-get run use these lists instead of the host's.
    pub(crate) fn apt_args(&self) -> Vec<String> {
        let mut v = vec!["-c".to_owned(), self.conf_file().display().to_string()];
        for (key, path) in [
            ("Dir::State::Lists", self.lists_dir()),
            ("Dir::Cache", self.cache_dir()),
            ("Dir::State::status", self.dir.join("status")),
        ] {
            v.push("-o".to_owned());
            v.push(format!("{key}={}", path.display()));
        }
        v
    }

    /// Runs apt-get with these lists and a stable locale, so its messages can be quoted.
    pub(crate) fn command(&self) -> Command {
        let mut c = Command::new("apt-get");
        c.args(self.apt_args()).env("LC_ALL", "C");
        c
    }

    /// Whether the lists were refreshed during this build.
    pub(crate) fn is_fresh(&self) -> bool {
        self.fresh.get()
    }

    /// When the lists were last updated successfully; `None` when never, or when the index
    /// files have gone since.
    fn updated_at(&self) -> Option<SystemTime> {
        let t = fs::metadata(self.stamp()).and_then(|m| m.modified()).ok()?;
        self.has_indexes().then_some(t)
    }

    fn has_indexes(&self) -> bool {
        fs::read_dir(self.lists_dir()).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    /// Updates the lists when they are missing or older than [`MAX_AGE`].
    pub(crate) fn refresh_if_stale(&self, progress: &Progress) -> Result<(), ImageError> {
        let updated = self.updated_at();
        if !is_stale(updated, SystemTime::now()) {
            return Ok(());
        }
        let why = if updated.is_some() {
            "older than a day"
        } else {
            "none yet"
        };
        self.update(progress, why)
    }

    /// Runs `apt-get update` into these lists (once per build), saying why on the progress
    /// line. A failure with usable older lists is reported and the old lists are used; with
    /// none, it is an error.
    pub(crate) fn update(&self, progress: &Progress, why: &str) -> Result<(), ImageError> {
        if self.fresh.get() {
            return Ok(());
        }
        let started = SystemTime::now();
        let lock_path = self.dir.join("update.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at(&lock_path)?;
        // apt-get refuses to start while another one holds the lists' lock; builds sharing
        // this cache wait here instead, and skip their own update if one finished meanwhile.
        lock.lock().at(&lock_path)?;
        // The stamp's mtime comes from the kernel's coarse clock, which lags a little.
        if self
            .updated_at()
            .is_some_and(|t| t + Duration::from_secs(2) >= started)
        {
            self.fresh.set(true);
            return Ok(());
        }
        progress.plan(1);
        progress.step(&format!("updating package lists ({why})"));
        let out = self
            .command()
            .arg("update")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| ImageError::Spawn {
                program: "apt-get".into(),
                source,
            })?;
        self.fresh.set(true);
        if out.status.success() {
            write_atomic(&self.stamp(), b"")?;
            let warnings = warnings(&out);
            if !warnings.is_empty() {
                tracing::warn!(lists = %self.lists_dir().display(), "apt-get update: {warnings}");
            }
            return Ok(());
        }
        let reason = one_line(&String::from_utf8_lossy(&out.stderr), out.status);
        if self.has_indexes() {
            progress.step(&format!(
                "updating package lists failed ({reason}); using the older lists"
            ));
            return Ok(());
        }
        Err(ImageError::ListsUpdate {
            lists: self.lists_dir(),
            reason,
        })
    }
}

fn warnings(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("W: "))
        .collect::<Vec<_>>()
        .join("; ")
}

/// apt-get's stderr reduced to one line: its errors ("E: ...") when it printed any, else all
/// it printed, else its exit status.
pub(crate) fn one_line(stderr: &str, status: std::process::ExitStatus) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("E: "))
        .collect();
    let picked = if errors.is_empty() { lines } else { errors };
    if picked.is_empty() {
        format!("apt-get {status}")
    } else {
        picked.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn staleness_rule() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let hour = Duration::from_secs(3600);
        assert!(is_stale(None, now), "never updated");
        assert!(!is_stale(Some(now), now));
        assert!(!is_stale(Some(now - hour), now));
        assert!(
            !is_stale(Some(now - MAX_AGE), now),
            "exactly a day is still fresh"
        );
        assert!(is_stale(Some(now - MAX_AGE - Duration::from_secs(1)), now));
        assert!(is_stale(Some(now - 30 * MAX_AGE), now));
        // A stamp a few seconds ahead is timestamp granularity; an hour ahead is a changed
        // clock, and such a stamp proves nothing about the lists' age.
        assert!(!is_stale(Some(now + Duration::from_secs(2)), now));
        assert!(is_stale(Some(now + hour), now));
    }

    #[test]
    fn stamp_and_indexes_decide_staleness() {
        let t = tempfile::tempdir().unwrap();
        let a = AptLists::open(t.path().join("apt")).unwrap();
        assert_eq!(a.updated_at(), None);
        write_atomic(&a.stamp(), b"").unwrap();
        assert_eq!(
            a.updated_at(),
            None,
            "a stamp without index files is no update"
        );
        fs::write(
            a.lists_dir()
                .join("deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4"),
            b"",
        )
        .unwrap();
        assert!(!is_stale(a.updated_at(), SystemTime::now()));
        let args = a.apt_args().join(" ");
        assert!(args.contains("Dir::State::Lists="), "{args}");
        for lax in [
            "allow-unauthenticated",
            "AllowInsecure",
            "trusted",
            "AllowWeak",
        ] {
            assert!(!args.contains(lax), "{args}");
            assert!(!APT_CONF.contains(lax), "{APT_CONF}");
        }
    }

    #[test]
    fn errors_fit_on_one_line() {
        let st = std::process::ExitStatus::from_raw(100 << 8);
        let e =
            "W: something\nE: Can't find a source to download version '1' of 'x:amd64'\n\nE: two\n";
        assert_eq!(
            one_line(e, st),
            "E: Can't find a source to download version '1' of 'x:amd64'; E: two"
        );
        assert_eq!(one_line("W: a\nW: b\n", st), "W: a; W: b");
        assert_eq!(one_line("", st), format!("apt-get {st}"));
    }
}
