//! Builds real images from the Debian archive (needs network access to the apt mirror) and runs
//! their programs natively on the host, through the image's own ld.so, to prove the shared
//! library closure complete. Each test uses its own cache directory, so they run in parallel.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use guest_images::image::{self, BuildOptions, Image, MANIFEST_FILE, MARKER_FILE};

/// The image's interpreter, and its library directory as the only place libraries come from.
const LD_SO: &str = "usr/lib64/ld-linux-x86-64.so.2";
const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";

/// Runs `prog` (a path inside the image) with the image's ld.so and libraries.
fn run_in_image(
    img: &Image,
    prog: &str,
    args: &[&str],
    env: &[(&str, String)],
    stdin: &[u8],
) -> Output {
    let mut cmd = Command::new(img.root.join(LD_SO));
    cmd.arg("--inhibit-cache")
        .arg("--library-path")
        .arg(img.root.join(LIB_DIR))
        .arg(img.root.join(prog.trim_start_matches('/')))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ld.so");
    {
        use std::io::Write;
        let mut i = child.stdin.take().unwrap();
        i.write_all(stdin).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// ld.so falls back to the host's directories for anything not in --library-path, so a
/// program starting is no proof by itself: check that every library it maps comes from the
/// image.
fn assert_libraries_from_image(img: &Image, prog: &str) {
    let out = Command::new(img.root.join(LD_SO))
        .arg("--inhibit-cache")
        .arg("--library-path")
        .arg(img.root.join(LIB_DIR))
        .arg("--list")
        .arg(img.root.join(prog.trim_start_matches('/')))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = img.root.to_str().unwrap();
    for line in text.lines() {
        if let Some((_, path)) = line.split_once("=> ") {
            assert!(
                path.trim_start().starts_with(root),
                "{prog}: {line} is not from the image"
            );
        }
    }
}

fn opts(dir: &Path) -> BuildOptions {
    let mut o = BuildOptions::in_dir(dir);
    o.progress = image::ProgressMode::Lines;
    o
}

fn timed_build(name: &str, o: &BuildOptions) -> Image {
    let t = Instant::now();
    let img = image::build(name, o).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!(
        "built {name} in {:.1?} at {}",
        t.elapsed(),
        img.root.display()
    );
    img
}

#[test]
fn busybox_builds_runs_and_is_cached() {
    let cache = tempfile::tempdir().unwrap();
    let o = opts(cache.path());
    let img = timed_build("busybox", &o);
    let out = Command::new(img.root.join("bin/busybox"))
        .args(["echo", "hi"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    let m = &img.manifest;
    assert_eq!(m.name, "busybox");
    assert_eq!(m.entry, "/bin/busybox");
    assert_eq!(m.packages.len(), 1);
    assert_eq!(m.packages[0].name, "busybox-static");
    assert!(
        m.packages[0].version.starts_with("1:"),
        "{:?}",
        m.packages[0]
    );
    assert!(img.root.join(MARKER_FILE).is_file());
    assert_eq!(m.key, m.recipe_key);
    img.verify().unwrap();
    // The usrmerge layout: /bin is a link into /usr.
    assert_eq!(
        std::fs::read_link(img.root.join("bin")).unwrap(),
        Path::new("usr/bin")
    );

    // Second build: a cache hit, same directory, no new download.
    let t = Instant::now();
    let again = image::build("busybox", &o).unwrap();
    let hit = t.elapsed();
    eprintln!("busybox cache hit in {hit:.1?}");
    assert_eq!(again, img);
    assert!(hit.as_secs() < 10, "{hit:?}");

    // open() uses the current image without asking apt.
    let t = Instant::now();
    assert_eq!(image::open("busybox", &o).unwrap(), img);
    eprintln!("busybox open in {:.1?}", t.elapsed());

    let listed = image::list(&o).unwrap();
    let bb = listed.iter().find(|s| s.name == "busybox").unwrap();
    assert_eq!(bb.image.as_ref().unwrap().root, img.root);
    assert!(listed
        .iter()
        .find(|s| s.name == "redis")
        .unwrap()
        .image
        .is_none());
}

#[test]
fn corrupt_or_incomplete_entries_are_rebuilt() {
    let cache = tempfile::tempdir().unwrap();
    let o = opts(cache.path());
    let img = timed_build("busybox", &o);

    // No marker: rebuilt, in the same place.
    std::fs::remove_file(img.root.join(MARKER_FILE)).unwrap();
    assert!(image::list(&o).unwrap().iter().all(|s| s.image.is_none()));
    let again = image::build("busybox", &o).unwrap();
    assert_eq!(again.root, img.root);
    assert!(again.root.join(MARKER_FILE).is_file());

    // Marker for another key.
    std::fs::write(
        img.root.join(MARKER_FILE),
        "ditto-image 1\nkey 00\nmanifest-sha256 00\n",
    )
    .unwrap();
    let again = image::open("busybox", &o).unwrap();
    assert_eq!(again.root, img.root);
    again.verify().unwrap();

    // Manifest unparseable, then missing.
    std::fs::write(img.root.join(MANIFEST_FILE), "{ not json").unwrap();
    let again = image::open("busybox", &o).unwrap();
    assert_eq!(again.manifest, img.manifest);
    std::fs::remove_file(img.root.join(MANIFEST_FILE)).unwrap();
    let again = image::build("busybox", &o).unwrap();
    assert_eq!(again.manifest, img.manifest);
    again.verify().unwrap();

    // A tampered file is caught by verify (not by open, which does not read every file).
    std::fs::write(img.root.join("etc/hosts"), "changed\n").unwrap();
    assert!(
        matches!(img.verify(), Err(image::ImageError::Changed { .. })),
        "{:?}",
        img.verify()
    );
}

#[test]
fn python3_closure_is_complete() {
    let cache = tempfile::tempdir().unwrap();
    let img = timed_build("python3", &opts(cache.path()));
    assert_libraries_from_image(&img, "/usr/bin/python3.11");
    let home = img.root.join("usr").display().to_string();
    let out = run_in_image(
        &img,
        "/usr/bin/python3.11",
        &["-S", "-c", "import sys, os; print(6*7)"],
        &[("PYTHONHOME", home.clone())],
        b"",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "42\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With site imported too (what the guest runs by default).
    let out = run_in_image(
        &img,
        "/usr/bin/python3.11",
        &["-c", "print(6*7)"],
        &[("PYTHONHOME", home)],
        b"",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "42\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn server_recipes_build_and_their_programs_run() {
    let cache = tempfile::tempdir().unwrap();
    let o = opts(cache.path());

    let redis = timed_build("redis", &o);
    assert_eq!(redis.manifest.ports, vec![6379]);
    assert!(redis.root.join("etc/redis/ditto.conf").is_file());
    assert!(redis.root.join("var/lib/redis").is_dir());
    assert_libraries_from_image(&redis, "/usr/bin/redis-server");
    let out = run_in_image(&redis, "/usr/bin/redis-server", &["--version"], &[], b"");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Redis server v=7."),
        "{out:?}"
    );

    let nginx = timed_build("nginx", &o);
    assert!(nginx.root.join("etc/nginx/mime.types").is_file());
    assert!(nginx.root.join("srv/www/index.html").is_file());
    assert_libraries_from_image(&nginx, "/usr/sbin/nginx");
    let out = run_in_image(&nginx, "/usr/sbin/nginx", &["-v"], &[], b"");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nginx/1."),
        "{out:?}"
    );

    let pbzip2 = timed_build("pbzip2", &o);
    assert_libraries_from_image(&pbzip2, "/usr/bin/pbzip2");
    let input = b"ditto ".repeat(100_000);
    let out = run_in_image(&pbzip2, "/usr/bin/pbzip2", &["-p4", "-c"], &[], &input);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.starts_with(b"BZh"), "not bzip2 output");
    let back = run_in_image(&pbzip2, "/usr/bin/pbzip2", &["-d", "-c"], &[], &out.stdout);
    assert_eq!(back.stdout, input);

    for img in [&redis, &nginx, &pbzip2] {
        let size = dir_size(&img.root);
        eprintln!(
            "{}: {} packages, {:.1} MiB",
            img.manifest.name,
            img.manifest.packages.len(),
            size as f64 / 1048576.0
        );
    }
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let m = e.path().symlink_metadata().unwrap();
        n += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    n
}

#[test]
fn added_files_bring_their_libraries_and_survive_rebuilds() {
    let cache = tempfile::tempdir().unwrap();
    let o = opts(cache.path());
    let base = timed_build("busybox", &o);
    // busybox-static has no libc at all: the host's dash needs libc and ld.so from the host.
    let tools = tempfile::tempdir().unwrap();
    let dash = tools.path().join("dash");
    std::fs::copy("/bin/sh", &dash).unwrap();
    let img = image::add_files("busybox", std::slice::from_ref(&dash), &o).unwrap();
    assert_ne!(img.root, base.root);
    assert_eq!(img.manifest.recipe_key, base.manifest.key);
    assert_eq!(img.manifest.user_files.len(), 1);
    assert_eq!(img.manifest.user_files[0].path, "/usr/local/bin/dash");
    let libs: Vec<_> = img
        .manifest
        .host_libraries
        .iter()
        .map(|l| l.path.as_str())
        .collect();
    assert!(
        libs.contains(&"/usr/lib/x86_64-linux-gnu/libc.so.6"),
        "{libs:?}"
    );
    assert!(libs.contains(&"/lib64/ld-linux-x86-64.so.2"), "{libs:?}");
    image::check_closure(&img.root, Some("/usr/local/bin/dash")).unwrap();
    assert_libraries_from_image(&img, "/usr/local/bin/dash");
    let out = run_in_image(&img, "/usr/local/bin/dash", &["-c", "echo ok"], &[], b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    // The base image is untouched.
    assert!(!base.root.join("usr/local/bin/dash").exists());
    base.verify().unwrap();

    // Adding the same file again is a cache hit; open and build keep the user files.
    let again = image::add_files("busybox", std::slice::from_ref(&dash), &o).unwrap();
    assert_eq!(again, img);
    assert_eq!(image::open("busybox", &o).unwrap(), img);
    assert_eq!(image::build("busybox", &o).unwrap(), img);

    // A second file joins the first.
    let script = tools.path().join("hello.sh");
    std::fs::write(&script, "#!/bin/sh\necho hello\n").unwrap();
    let two = image::add_files("busybox", &[script], &o).unwrap();
    let names: Vec<_> = two
        .manifest
        .user_files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(names, ["/usr/local/bin/dash", "/usr/local/bin/hello.sh"]);
    assert!(two.root.join("usr/local/bin/dash").is_file());

    // A rebuild from scratch carries the user files over.
    let mut force = o.clone();
    force.rebuild = true;
    let rebuilt = image::build("busybox", &force).unwrap();
    assert_eq!(rebuilt.manifest.user_files, two.manifest.user_files);
    assert_eq!(rebuilt.manifest.tree_sha256, two.manifest.tree_sha256);
}
