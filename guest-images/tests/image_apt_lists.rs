//! An image build stands on its own: it works from ditto's own apt lists in its cache, not the
//! host's, so it succeeds on a machine whose `/var/lib/apt/lists` is empty or stale. Needs
//! network access to the host's apt sources, and root for the mount namespace.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use guest_images::image::{self, BuildOptions, ProgressMode};

/// Set in the environment of the copy of this test binary that runs inside the namespace.
const CHILD: &str = "DITTO_TEST_APT_LISTS_CHILD";
/// Printed by that copy once its build succeeded and its image ran.
const CHILD_OK: &str = "apt-lists-child-ok";
/// When set, the namespace runs `$DITTO_BIN image build busybox` (the CLI, e.g. an older
/// binary to compare with) instead of the library build.
const DITTO_BIN: &str = "DITTO_BIN";
/// The whole namespaced build, apt-get update included, must end within this.
const LIMIT_S: &str = "300";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs `argv` in a new mount namespace with an empty tmpfs over the host's apt lists, with
/// `DITTO_CACHE` set to `cache`, bounded by [`LIMIT_S`].
fn in_namespace_with_empty_lists(cache: &Path, argv: &[String], env: &[(&str, &str)]) -> Output {
    Command::new("timeout")
        .args(["-k", "5", LIMIT_S, "unshare", "-m", "sh", "-c"])
        .arg("mount -t tmpfs none /var/lib/apt/lists && exec \"$@\"")
        .arg("sh")
        .args(argv)
        .env("DITTO_CACHE", cache)
        .envs(env.iter().copied())
        .output()
        .expect("spawn timeout/unshare")
}

#[test]
fn builds_with_empty_host_apt_lists() {
    if !is_root() {
        eprintln!("SKIPPED builds_with_empty_host_apt_lists: unshare -m and mount need root");
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let (argv, env): (Vec<String>, Vec<(&str, &str)>) = match std::env::var(DITTO_BIN) {
        Ok(bin) => (
            vec![bin, "image".into(), "build".into(), "busybox".into()],
            vec![],
        ),
        Err(_) => (
            vec![
                std::env::current_exe().unwrap().display().to_string(),
                "--exact".into(),
                "child_builds_in_the_namespace".into(),
                "--ignored".into(),
                "--nocapture".into(),
                "--test-threads=1".into(),
            ],
            vec![(CHILD, "1")],
        ),
    };
    let out = in_namespace_with_empty_lists(cache.path(), &argv, &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "build with empty host apt lists failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    if std::env::var_os(DITTO_BIN).is_none() {
        assert!(stdout.contains(CHILD_OK), "{stdout}\n{stderr}");
    }
    assert!(
        stderr.contains("updating package lists"),
        "the progress line does not say so:\n{stderr}"
    );
    // The lists the build used are ditto's, in the cache.
    let lists: Vec<String> = std::fs::read_dir(cache.path().join("apt/lists"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        lists.iter().any(|n| n.contains("_Packages")),
        "no index files in ditto's lists: {lists:?}"
    );
    assert!(
        lists.iter().any(|n| n.ends_with("Release")),
        "no signed Release files in ditto's lists: {lists:?}"
    );
}

/// The part of [`builds_with_empty_host_apt_lists`] that runs inside the namespace.
#[test]
#[ignore = "run by builds_with_empty_host_apt_lists inside a mount namespace"]
fn child_builds_in_the_namespace() {
    assert_eq!(
        std::env::var(CHILD).as_deref(),
        Ok("1"),
        "only meaningful inside builds_with_empty_host_apt_lists"
    );
    // The premise: apt's own lists are empty here, so apt with the host's lists knows nothing.
    let host_lists: Vec<_> = std::fs::read_dir("/var/lib/apt/lists")
        .unwrap()
        .flatten()
        .collect();
    assert!(host_lists.is_empty(), "{host_lists:?}");
    let o = BuildOptions {
        progress: ProgressMode::Lines,
        ..BuildOptions::default()
    };
    let img = image::build("busybox", &o).unwrap_or_else(|e| panic!("{e}"));
    assert!(img.root.starts_with(std::env::var("DITTO_CACHE").unwrap()));
    let out = Command::new(img.root.join("bin/busybox"))
        .args(["echo", "hi"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    println!("{CHILD_OK}");
}

/// When ditto's lists were last updated: only a successful `apt-get update` moves it.
fn stamp_mtime(cache: &Path) -> SystemTime {
    std::fs::metadata(cache.join("apt/updated"))
        .and_then(|m| m.modified())
        .unwrap()
}

#[test]
fn lists_are_refreshed_only_when_older_than_a_day() {
    let cache = tempfile::tempdir().unwrap();
    let o = BuildOptions::in_dir(cache.path());
    image::build("busybox", &o).unwrap_or_else(|e| panic!("{e}"));
    let first = stamp_mtime(cache.path());

    // Fresh lists: the next build does not update them.
    let mut again = o.clone();
    again.rebuild = true;
    image::build("busybox", &again).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stamp_mtime(cache.path()), first, "fresh lists were updated");

    // Lists two days old: the next build updates them first.
    let old = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(cache.path().join("apt/updated"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    image::build("busybox", &again).unwrap_or_else(|e| panic!("{e}"));
    let after = stamp_mtime(cache.path());
    assert!(
        after > first,
        "stale lists were not updated ({after:?} <= {first:?})"
    );
}

#[test]
fn fresh_lists_missing_a_package_are_refreshed_and_the_build_retried() {
    let cache = tempfile::tempdir().unwrap();
    let o = BuildOptions::in_dir(cache.path());
    image::build("busybox", &o).unwrap_or_else(|e| panic!("{e}"));
    let first = stamp_mtime(cache.path());

    // Lists less than a day old that no longer offer the package (as when the archive has
    // moved on since): keep only the smallest index, which lacks busybox-static.
    let lists = cache.path().join("apt/lists");
    let mut indexes: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(&lists)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("_Packages"))
        .map(|e| (e.metadata().unwrap().len(), e.path()))
        .collect();
    indexes.sort();
    assert!(indexes.len() >= 2, "{indexes:?}");
    for (_, p) in &indexes[1..] {
        std::fs::remove_file(p).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1100));

    let mut again = o.clone();
    again.rebuild = true;
    let img = image::build("busybox", &again).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(img.manifest.packages[0].name, "busybox-static");
    assert!(
        stamp_mtime(cache.path()) > first,
        "the lists were not refreshed"
    );
}
