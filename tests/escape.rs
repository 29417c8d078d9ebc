//! The root stays closed (issue 18): a program under `ditto run --root DIR` tries to leave DIR
//! through /proc/self/{root,cwd,fd} links, O_PATH descriptors and `..`, a symlink swapped
//! while it is resolved, and Unix socket paths; nothing outside DIR is read, created or
//! connected to.

mod common;

use std::collections::BTreeSet;
use std::os::unix::net::UnixListener;
use std::path::Path;

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every path under `dir`, relative to it.
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    // Bounded: the trees here hold a few entries.
    for _ in 0..10_000 {
        let Some(d) = todo.pop() else { break };
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.insert(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            }
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn proc_links_opath_swaps_and_sockets_stay_inside_the_root() {
    let dir = tempdir();
    let host = dir.path();
    let root = host.join("root");
    let outside = host.join("outside");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("etc/inside"), "inside-root\n").unwrap();
    std::fs::write(root.join("etc/secret"), "inside-secret\n").unwrap();
    std::fs::write(outside.join("secret"), "OUTSIDE-SECRET\n").unwrap();
    // A decoy where paths that climb above the root land when they are clamped to it.
    std::fs::create_dir_all(root.join("outside")).unwrap();
    std::fs::write(root.join("outside/secret"), "decoy\n").unwrap();
    std::fs::copy(prog("escape2"), root.join("escape2")).unwrap();
    let listener = UnixListener::bind(outside.join("sock")).unwrap();
    listener.set_nonblocking(true).unwrap();
    let before = tree(host);

    let o = run_in(&["--root", s(&root)], &["/escape2", s(host)], b"");
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.ends_with("done\n"), "{out}");

    // Nothing outside the root was read: the outside secret's bytes appear nowhere.
    let secret = hex(b"OUTSIDE-SECRET\n");
    assert!(
        !out.contains(&secret[..14]),
        "read outside the root:\n{out}"
    );
    // Nor connected to.
    assert!(
        listener.accept().is_err(),
        "connected to a socket outside the root:\n{out}"
    );
    // Nor created: the tree outside the root is as it was (the root itself may change).
    let after: BTreeSet<String> = tree(host)
        .into_iter()
        .filter(|p| !p.starts_with("root"))
        .collect();
    let before: BTreeSet<String> = before
        .into_iter()
        .filter(|p| !p.starts_with("root"))
        .collect();
    assert_eq!(after, before, "created outside the root:\n{out}");

    // The attempts were real: the same descriptors reach inside the root, and the paths
    // that climb above it land in it, as natively in a chroot. (The guest's /proc does not
    // resolve through its root, cwd and directory-fd links yet: those give ENOENT, which
    // is no escape; if they ever resolve, it must be to inside the root.)
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} line:\n{out}"))
            .to_string()
    };
    let inside = hex(b"inside-root\n");
    for name in ["opath-up2-inside", "opath-reopen"] {
        assert!(line(name).contains(&inside), "{}", line(name));
    }
    for name in ["root-inside", "cwd-inside", "fd-inside"] {
        let l = line(name);
        assert!(l.contains(&inside) || l.ends_with("errno=2"), "{l}");
    }
    let decoy = hex(b"decoy\n");
    for name in [
        "root-host",
        "root-dotdot",
        "opath-up-secret",
        "opath-up2-secret",
    ] {
        let l = line(name);
        assert!(l.contains(&decoy) || l.ends_with("errno=2"), "{l}");
    }
    assert!(line("opath-up2-secret").contains(&decoy), "{out}");
    assert!(line("openat-dotdot").contains(&decoy), "{out}");
    assert_eq!(line("create-dotdot"), "create-dotdot: made");
    assert!(root.join("outside/created1").exists(), "{out}");
    assert_eq!(line("cwd-link"), "cwd-link: /etc");
    // The swap race ran and opened the inside target many times.
    let swap = line("swap");
    let opens: u64 = swap
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(opens > 0, "{swap}");
    assert!(swap.ends_with(", 0 outside"), "{swap}");
}

/// `..` through the bind points of an image's state directory (`/tmp` of the busybox image,
/// and the host's working directory, which appears at its own path): symlinks planted in
/// the state directory that climb out, absolute host paths, /proc/self links. The shell's
/// own redirections do the reads and writes (busybox sh cannot fork under ditto).
#[test]
fn dotdot_through_an_images_bind_points_stays_inside() {
    let dir = tempdir();
    let host = dir.path();
    let h = s(host);
    let state = host.join("state");
    let outside = host.join("outside");
    let cwd = host.join("cwd");
    for d in [state.join("tmp"), outside.clone(), cwd.clone()] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(outside.join("secret"), "OUTSIDE-SECRET\n").unwrap();
    std::fs::write(state.join("tmp/inside"), "in-state\n").unwrap();
    let link = |target: &str, name: &str| {
        std::os::unix::fs::symlink(target, state.join("tmp").join(name)).unwrap()
    };
    link("../../outside/secret", "l1");
    link(&format!("{h}/outside/secret"), "l2");
    link("../", "up");
    link("../..", "up2");
    image_root("busybox");
    let script = format!(
        r#"t() {{ if read -r l < "$1"; then echo "$1: read $l"; else echo "$1: failed"; fi; }}
t /tmp/inside
t /tmp/../../outside/secret; t /tmp/../../../../outside/secret
cd /tmp; t ../../outside/secret; t inside
t /tmp/l1; t /tmp/l2; t /tmp/up/outside/secret; t /tmp/up/up/outside/secret
t /tmp/up2/outside/secret; t /tmp/up2{h}/outside/secret
t {h}/cwd/../outside/secret; cd {h}/cwd; t ../outside/secret; t ../../../..{h}/outside/secret
t /proc/self/root{h}/outside/secret; t /proc/self/cwd/../outside/secret
echo m > /tmp/../../outside/new1; echo m > /tmp/up2/outside/new2; echo m > ../outside/new3
echo m > /tmp/up/../new4; echo m > {h}/cwd/../new5; echo m > /tmp/l1x/../../outside/new6
echo done
"#
    );
    let before = tree(&outside);
    let mut c = ditto();
    c.current_dir(&cwd)
        .args(["run", "--image", "busybox", "--state", s(&state), "--"])
        .args(["-c", &script]);
    let o = output_within(c, 60);
    let out = stdout(&o);
    assert!(out.ends_with("done\n"), "{out}{}", stderr(&o));
    assert!(!out.contains("OUTSIDE"), "read outside the root:\n{out}");
    assert_eq!(tree(&outside), before, "created outside the root:\n{out}");
    // The reads and writes were real: inside the bind they work.
    assert!(out.contains("/tmp/inside: read in-state"), "{out}");
    assert!(out.contains("\ninside: read in-state"), "{out}");
    // `..` at a bind point stays in the bind: writes land in the state or working dir.
    assert!(state.join("tmp/new4").exists(), "{out}");
    assert!(cwd.join("new5").exists(), "{out}");
    assert!(!host.join("new5").exists(), "{out}");
}
