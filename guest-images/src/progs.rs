//! The project's own guest programs and the `libditto` interposer, built by `build.rs` with
//! the host's C compiler. They are ordinary x86-64 Linux programs, so every one also runs
//! natively; tests compare a guest run's stdout with the formats documented in each
//! program's header comment (progs/*.c).
//!
//! Naming: `<name>` is static; `<name>-det` is static with libditto linked in (for static
//! guests, which LD_PRELOAD cannot reach); `<name>-dyn` is dynamic, for libditto by
//! LD_PRELOAD. The det ABI the programs and libditto use is `include/ditto.h`.

use std::path::PathBuf;

/// Every program `build.rs` produces, by name (`path(name)` finds each).
pub const PROGRAMS: &[&str] = &[
    "addrlen_race",
    "atomic_claims",
    "badptr",
    "badtls",
    "bench",
    "bigrecord",
    "cmsgwrap",
    "core_stall",
    "detbench",
    "escape",
    "escape2",
    "exhaust",
    "exitcode",
    "fault",
    "fdleak",
    "glibc_locks-dyn",
    "hello",
    "hostfiles",
    "hostfiles-det",
    "hostfiles-dyn",
    "hostops",
    "hugetimeout",
    "lstat_dirs",
    "memfault",
    "mremap_hole",
    "omp_claims-dyn",
    "outside_fds",
    "privdrop",
    "procescape",
    "procself",
    "prodcons",
    "prodcons-det",
    "prodcons-dyn",
    "protbuf",
    "ptimer",
    "poolwrite",
    "poolwrite-det",
    "poolwrite-dyn",
    "pthread_test",
    "pthread_test-det",
    "pthread_test-dyn",
    "pwritev_flags",
    "race_counter",
    "race_counter-det",
    "race_counter-dyn",
    "racey",
    "racey-det",
    "racey-dyn",
    "reserve",
    "seccomp_probe",
    "sigfpu",
    "signals",
    "sigsetsize",
    "sysfuzz",
    "thread_churn",
    "transient_reads",
    "unixpath",
    "vdsotime",
    "vdsotime-dyn",
];

/// Set libditto's emulation mode: natively, a process-wide mutex stands in for the det
/// token, so the det-mode code paths run (without determinism). Ignored under ditto.
pub const LIBDITTO_EMULATE_ENV: &str = "DITTO_LIBDITTO_EMULATE";

/// The directory that holds the built programs and `libditto.so`.
pub fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("OUT_DIR"), "/progs"))
}

/// The built program called `name` (one of [`PROGRAMS`]), if it is there.
pub fn path(name: &str) -> Option<PathBuf> {
    if !PROGRAMS.contains(&name) {
        return None;
    }
    let p = dir().join(name);
    p.is_file().then_some(p)
}

/// The LD_PRELOAD interposer that makes pthread synchronisation deterministic.
pub fn libditto() -> PathBuf {
    dir().join("libditto.so")
}

/// The directory with `ditto.h`, the guest det ABI, for building other guest programs.
pub fn include_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/include"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn every_program_is_built_and_listed() {
        for name in PROGRAMS {
            assert!(
                path(name).is_some(),
                "{name} was not built in {}",
                dir().display()
            );
        }
        assert!(libditto().is_file());
        assert!(include_dir().join("ditto.h").is_file());
        for entry in std::fs::read_dir(dir()).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                name == "libditto.so" || PROGRAMS.contains(&name.as_str()),
                "{name} is built but missing from PROGRAMS"
            );
        }
        assert_eq!(path("no-such-program"), None);
    }

    #[test]
    fn hello_runs_natively() {
        let out = Command::new(path("hello").unwrap()).output().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"hello from ditto\n");
    }
}
