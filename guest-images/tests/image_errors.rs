//! Error paths of the image builder: each error names what is at fault.

use std::fs;
use std::path::Path;

use guest_images::image::{self, BuildOptions, ImageError};

#[test]
fn unknown_image_lists_the_known_ones() {
    let cache = tempfile::tempdir().unwrap();
    let o = BuildOptions::in_dir(cache.path());
    for e in [
        image::build("no-such-image", &o).unwrap_err(),
        image::open("no-such-image", &o).unwrap_err(),
        image::add_files("no-such-image", &[], &o).unwrap_err(),
    ] {
        assert!(matches!(e, ImageError::UnknownImage { .. }), "{e}");
        let msg = e.to_string();
        for name in [
            "no-such-image",
            "busybox",
            "python3",
            "redis",
            "nginx",
            "pbzip2",
        ] {
            assert!(msg.contains(name), "{msg}");
        }
    }
}

#[test]
fn nonexistent_package_is_named() {
    let cache = tempfile::tempdir().unwrap();
    let o = BuildOptions::in_dir(cache.path());
    let mut r = image::recipes::find("busybox").unwrap();
    r.name = "broken".into();
    r.packages = vec!["busybox-static".into(), "ditto-no-such-package".into()];
    let e = image::build_recipe(&r, &o).unwrap_err();
    match &e {
        ImageError::Download { package, stderr } => {
            assert_eq!(package, "ditto-no-such-package");
            assert!(stderr.contains("ditto-no-such-package"), "{stderr}");
        }
        other => panic!("{other}"),
    }
    // Nothing half-built is left behind.
    let images: Vec<_> = fs::read_dir(cache.path().join("images"))
        .unwrap()
        .flatten()
        .collect();
    assert!(images.is_empty(), "{images:?}");
}

#[test]
fn missing_library_in_a_recipe_is_named() {
    let cache = tempfile::tempdir().unwrap();
    let o = BuildOptions::in_dir(cache.path());
    // pbzip2 without libbz2.
    let mut r = image::recipes::find("pbzip2").unwrap();
    r.name = "pbzip2-broken".into();
    r.packages.retain(|p| p != "libbz2-1.0");
    let e = image::build_recipe(&r, &o).unwrap_err();
    match &e {
        ImageError::MissingLibrary { library, needed_by } => {
            assert_eq!(library, "libbz2.so.1.0");
            assert_eq!(needed_by, "/usr/bin/pbzip2");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn closure_check_on_a_synthetic_root_names_the_missing_library() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let copy = |host: &str, inner: &str| {
        let dest = r.join(inner);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(fs::canonicalize(host).unwrap(), dest).unwrap();
    };
    copy("/bin/sh", "usr/bin/sh");
    copy("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2");
    let e = image::check_closure(r, Some("/usr/bin/sh")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("libc.so.6") && msg.contains("/usr/bin/sh"),
        "{msg}"
    );
    copy(
        "/lib/x86_64-linux-gnu/libc.so.6",
        "lib/x86_64-linux-gnu/libc.so.6",
    );
    // glibc dlopens libgcc_s for pthread_exit; the check insists on it too.
    let msg = image::check_closure(r, Some("/usr/bin/sh"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("libgcc_s.so.1"), "{msg}");
    copy(
        "/lib/x86_64-linux-gnu/libgcc_s.so.1",
        "lib/x86_64-linux-gnu/libgcc_s.so.1",
    );
    let c = image::check_closure(r, Some("/usr/bin/sh")).unwrap();
    assert!(c.files.contains("/lib/x86_64-linux-gnu/libc.so.6"), "{c:?}");
}

#[test]
fn adding_a_missing_file_is_refused_before_anything_is_built() {
    let cache = tempfile::tempdir().unwrap();
    let o = BuildOptions::in_dir(cache.path());
    let e =
        image::add_files("busybox", &[Path::new("/no/such/file").to_path_buf()], &o).unwrap_err();
    assert!(matches!(e, ImageError::BadUserFile { .. }), "{e}");
    assert!(e.to_string().contains("/no/such/file"));
    assert!(fs::read_dir(cache.path())
        .map(|d| d.count() == 0)
        .unwrap_or(true));
}
