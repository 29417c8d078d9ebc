//! Issue 17, defects 1 and 9: the guest's own /proc, and mremap of unmapped ranges.
//!
//! With the default `--root /`, the host's `/proc/self` is the VMM: a program could read
//! (and write) ditto's memory through `/proc/self/mem` at an address from
//! `/proc/self/maps`. These tests run real programs under `ditto run` and check that /proc
//! is the program's own, as it is natively.

mod common;

use common::*;

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// The escape of today: find the ditto binary in /proc/self/maps and read its ELF
/// header through /proc/self/mem, directly and through a symlink.
#[test]
fn guest_cannot_read_the_vmm_through_proc_self_mem() {
    let ditto = std::fs::canonicalize(env!("CARGO_BIN_EXE_ditto")).unwrap();
    let dir = tempdir();
    let prog = prog("procescape");
    let mut c = common::ditto();
    c.args(["run", "--", s(&prog), s(&ditto), s(dir.path())]);
    let out = output_within(c, 60);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        !text.contains("read ELF"),
        "the guest read the VMM:\n{text}"
    );
    assert!(text.contains("maps: no ditto\n"), "{text}");
    // A symlink into the host's /proc is refused by the resolver's backstop.
    assert!(text.contains("symlink: errno=2\n"), "{text}");
    // Other processes and writable host files of /proc do not exist for the guest.
    assert!(text.contains("/proc/1/environ: errno=2\n"), "{text}");
    assert!(text.contains("/proc/sysrq-trigger: errno=2\n"), "{text}");
}

/// procself checks maps, mem, exe, cmdline, environ, status, stat, comm and fd/ against
/// what the program knows of itself; it passes natively and must pass under ditto.
#[test]
fn proc_self_describes_the_program_as_natively() {
    let prog = prog("procself");
    let argv = [s(&prog), "first-arg", "second"];
    let marker = format!("marker-{}", std::process::id());
    let env = [("PROCSELF_MARKER", marker.as_str())];
    let mut n = std::process::Command::new(argv[0]);
    n.args(&argv[1..]).envs(env);
    let native = output_within(n, 60);
    assert!(native.status.success(), "natively:\n{}", stdout(&native));
    let v = run_in_env(&[], &argv, b"", &env);
    assert_eq!(
        stdout(&v),
        stdout(&native),
        "under ditto (stderr: {})",
        stderr(&v)
    );
    assert!(v.status.success());
}

/// The marker in ditto's own environment that the program overwrote in its environment
/// must not show in its /proc/self/environ (procself's environ-live check), and the
/// environ text must be the program's, not the VMM's.
#[test]
fn proc_self_environ_is_the_programs() {
    let prog = prog("procself");
    let marker = format!("secret-{}", std::process::id());
    let v = run_in_env(&[], &[s(&prog)], b"", &[("PROCSELF_MARKER", &marker)]);
    let text = stdout(&v);
    assert!(text.contains("ok environ-live\n"), "{text}");
    assert!(text.contains("ok cmdline\n"), "{text}");
    assert!(text.contains("ok exe-readlink\n"), "{text}");
}

/// mremap of a range with a hole, or of an unmapped range, is EFAULT (defect 9); a
/// good move keeps the bytes. Same output as natively.
#[test]
fn mremap_of_unmapped_ranges_is_efault_as_natively() {
    let prog = prog("mremap_hole");
    let native = native(&[s(&prog)], b"");
    let v = run_in(&[], &[s(&prog)], b"");
    assert!(v.status.success(), "{}", stderr(&v));
    assert_eq!(stdout(&v), stdout(&native));
    assert!(stdout(&v).contains("hole: errno=14\nunmapped: errno=14\n"));
}

/// /proc text is built by each replica from its own state: a pair running procself in
/// either mode agrees (maps, status and the rest are deterministic).
#[test]
fn proc_self_in_a_pair_does_not_diverge() {
    let prog = prog("procself");
    for mode in ["det", "follow"] {
        let mut c = common::ditto();
        c.args(["pair", "--mode", mode, "--", s(&prog), "x"]);
        let out = output_within(c, 120);
        let (o, e) = (stdout(&out), stderr(&out));
        assert!(out.status.success(), "{mode}: {o}\n{e}");
        assert!(o.ends_with("failures 0\n"), "{mode}: {o}");
        assert!(e.contains("identical"), "{mode}: {e}");
    }
}
