//! Builds the project's guest programs (progs/*.c) and libditto with the host's C compiler.
//!
//! Outputs, all in `$OUT_DIR/progs/` (see src/progs.rs):
//! - `<name>`: every progs/*.c but [`DYNAMIC_ONLY`] and [`OPENMP`], static (`-static -O2 -pthread`), the
//!   guest contract's "ordinary static program".
//! - `<name>-det` for [`VARIANTS`]: static, with libditto linked in through
//!   `-Wl,--wrap`, because LD_PRELOAD cannot reach a static program.
//! - `<name>-dyn` for [`VARIANTS`], [`DYNAMIC_ONLY`], [`OPENMP`] and [`ALSO_DYNAMIC`]: dynamically linked, for libditto injected by LD_PRELOAD
//!   (needs ld.so and libc in the image).
//! - `libditto.so`: the LD_PRELOAD interposer.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Programs that synchronise through pthreads and so also get `-det` and `-dyn` builds.
const VARIANTS: &[&str] = &[
    "racey",
    "pthread_test",
    "prodcons",
    "race_counter",
    "hostfiles",
    "poolwrite",
];

/// Programs built only as `<name>-dyn`: they use glibc parts that a static program cannot
/// load (getaddrinfo's NSS modules), so a static build would only warn and fail at run time.
const DYNAMIC_ONLY: &[&str] = &["glibc_locks"];

/// OpenMP programs, built only as `<name>-dyn` with `-fopenmp`: libditto interposes
/// libgomp's entry points by LD_PRELOAD, which a static libgomp would not reach.
const OPENMP: &[&str] = &["omp_claims"];

/// Programs built static and also as `<name>-dyn`, with no `-det` build: vdsotime checks
/// that dynamic glibc, through ld.so, finds and uses the vDSO as the static one does.
const ALSO_DYNAMIC: &[&str] = &["vdsotime"];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("progs");
    // Start empty, so a program whose source was removed does not linger.
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).unwrap();
    let include = manifest.join("include");
    let progs_dir = manifest.join("progs");
    let libditto = manifest.join("libditto/libditto.c");

    println!("cargo:rerun-if-changed={}", progs_dir.display());
    println!("cargo:rerun-if-changed={}", include.display());
    println!("cargo:rerun-if-changed={}", libditto.display());
    println!("cargo:rerun-if-env-changed=CC");
    for entry in fs::read_dir(&include).unwrap() {
        println!("cargo:rerun-if-changed={}", entry.unwrap().path().display());
    }

    let cc = Cc::find(&include);

    let mut sources: Vec<PathBuf> = fs::read_dir(&progs_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    sources.sort();

    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let name = src.file_stem().unwrap().to_str().unwrap();
        if OPENMP.contains(&name) {
            let dyn_ = out.join(format!("{name}-dyn"));
            cc.run(
                &[&"-O2", &"-fopenmp", &"-pthread", &"-o", &dyn_, src],
                &format!("{name}-dyn"),
            );
            continue;
        }
        if DYNAMIC_ONLY.contains(&name) {
            let dyn_ = out.join(format!("{name}-dyn"));
            cc.run(
                &[&"-O2", &"-pthread", &"-o", &dyn_, src],
                &format!("{name}-dyn"),
            );
            continue;
        }
        cc.run(
            &[&"-static", &"-O2", &"-pthread", &"-o", &out.join(name), src],
            name,
        );
        if ALSO_DYNAMIC.contains(&name) {
            let dyn_ = out.join(format!("{name}-dyn"));
            cc.run(
                &[&"-O2", &"-pthread", &"-o", &dyn_, src],
                &format!("{name}-dyn"),
            );
        }
    }

    let so = out.join("libditto.so");
    cc.run(
        &[&"-shared", &"-fPIC", &"-O2", &"-o", &so, &libditto, &"-ldl"],
        "libditto.so",
    );

    let wrap_obj = out.join("libditto-wrap.o");
    cc.run(
        &[
            &"-c",
            &"-O2",
            &"-DDITTO_STATIC_WRAP",
            &"-o",
            &wrap_obj,
            &libditto,
        ],
        "libditto-wrap.o",
    );
    let wrap_flags: Vec<String> = wrapped_functions(&libditto)
        .iter()
        .map(|f| format!("-Wl,--wrap={f}"))
        .collect();

    for name in VARIANTS {
        let src = progs_dir.join(format!("{name}.c"));
        assert!(
            src.exists(),
            "build.rs VARIANTS names {name}, but {} is missing",
            src.display()
        );
        let det = out.join(format!("{name}-det"));
        let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"-static", &"-O2", &"-pthread"];
        args.extend(wrap_flags.iter().map(|s| s as &dyn AsRef<OsStr>));
        args.extend([&"-o" as &dyn AsRef<OsStr>, &det, &src, &wrap_obj]);
        cc.run(&args, &format!("{name}-det"));
        let dyn_ = out.join(format!("{name}-dyn"));
        cc.run(
            &[&"-O2", &"-pthread", &"-o", &dyn_, &src],
            &format!("{name}-dyn"),
        );
    }
    let _ = fs::remove_file(&wrap_obj);
}

/// The names in libditto.c's DITTO_FUNCS list, the one place that says what is wrapped.
fn wrapped_functions(libditto: &Path) -> Vec<String> {
    let text = fs::read_to_string(libditto).unwrap();
    let start = text
        .find("BEGIN DITTO_FUNCS")
        .expect("libditto.c: BEGIN DITTO_FUNCS marker");
    let end = text
        .find("END DITTO_FUNCS")
        .expect("libditto.c: END DITTO_FUNCS marker");
    let names: Vec<String> = text[start..end]
        .split("X(")
        .skip(1) // the text before the first X(
        .map(|s| s.split(')').next().unwrap().trim().to_string())
        .collect();
    assert!(
        names.len() > 10,
        "libditto.c: DITTO_FUNCS list looks wrong: {names:?}"
    );
    names
}

struct Cc {
    path: PathBuf,
    include: PathBuf,
}

impl Cc {
    fn find(include: &Path) -> Cc {
        let target = env::var("TARGET").unwrap_or_default();
        if !target.starts_with("x86_64-") || !target.contains("linux") {
            panic!("guest-images: guest programs are x86-64 Linux binaries; target {target} is not supported");
        }
        let path = cc::Build::new().get_compiler().path().to_path_buf();
        match Command::new(&path).arg("--version").output() {
            Ok(o) if o.status.success() => {}
            _ => panic!(
                "guest-images: no working C compiler at {} (set CC, or install gcc and the static \
                 glibc: apt-get install gcc libc6-dev)",
                path.display()
            ),
        }
        Cc {
            path,
            include: include.to_path_buf(),
        }
    }

    fn run(&self, args: &[&dyn AsRef<OsStr>], what: &str) {
        let mut cmd = Command::new(&self.path);
        cmd.arg("-Wall").arg("-I").arg(&self.include);
        for a in args {
            cmd.arg(a.as_ref());
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("guest-images: running {}: {e}", self.path.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let hint =
                if stderr.contains("cannot find -lc") || stderr.contains("cannot find -lpthread") {
                    "\nstatic programs need the static glibc: apt-get install libc6-dev"
                } else {
                    ""
                };
            panic!("guest-images: building {what} failed: {cmd:?}\n{stderr}{hint}");
        }
        for line in stderr.lines().filter(|l| l.contains("warning:")) {
            println!("cargo:warning={what}: {line}");
        }
    }
}
