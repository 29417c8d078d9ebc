//! The image recipes: one table, one entry per image.
//!
//! Package lists are explicit on purpose. apt's dependency closure would pull in perl, debconf
//! and the rest of a bootable system; a process VM needs only the program and the shared
//! libraries it loads, and the builder's DT_NEEDED check proves that list complete.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::ImageError;

/// How to build one image: the packages, what to run, and what to write on top.
///
/// The whole struct (except the description) goes into the image's content key, so any change
/// to a recipe makes a new image rather than reusing a stale one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    /// The image name (`[a-z0-9][a-z0-9_-]*`).
    pub name: String,
    /// Bumped by hand when the recipe changes in a way worth telling users about.
    pub version: u32,
    /// One line for `ditto image list`; not part of the content key.
    #[serde(skip)]
    pub description: String,
    /// Debian package names, unpacked in this order (later files win).
    pub packages: Vec<String>,
    /// Absolute path, inside the image, of the program to run.
    pub entry: String,
    /// Default arguments (argv[1..]).
    pub args: Vec<String>,
    /// Environment of the program.
    pub env: BTreeMap<String, String>,
    /// TCP ports the program listens on.
    pub ports: Vec<u16>,
    /// Directories (inside the image) the program writes to; created empty in the image and
    /// meant to be backed by per-replica storage.
    pub writable: Vec<String>,
    /// Files written into the image after the packages (configuration).
    pub files: Vec<RecipeFile>,
}

/// A file a recipe writes into the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipeFile {
    /// Absolute path inside the image.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// The contents.
    pub contents: String,
}

/// Every recipe with glibc also has libgcc-s1: glibc dlopens libgcc_s.so.1 in pthread_exit,
/// which no DT_NEEDED entry shows (the closure check knows and insists on it).
///
/// The recipe table in compact, `const`-friendly form; [`all`] turns it into [`Recipe`]s.
struct Def {
    name: &'static str,
    version: u32,
    description: &'static str,
    packages: &'static [&'static str],
    entry: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    ports: &'static [u16],
    writable: &'static [&'static str],
    files: &'static [(&'static str, &'static str)],
    /// Files of deterministic generated text: (path, size in bytes); see [`generated_text`].
    generated: &'static [(&'static str, usize)],
}

const RECIPES: &[Def] = &[
    Def {
        name: "busybox",
        version: 1,
        description: "BusyBox, statically linked (shell and core utilities in one binary)",
        packages: &["busybox-static"],
        entry: "/bin/busybox",
        args: &["sh"],
        env: &[],
        ports: &[],
        writable: &["/tmp"],
        files: &[],
        generated: &[],
    },
    Def {
        name: "python3",
        version: 1,
        description: "Python 3.11 interpreter with the minimal standard library",
        packages: &[
            "libc6",
            "libgcc-s1",
            "zlib1g",
            "libexpat1",
            "libpython3.11-minimal",
            "python3.11-minimal",
        ],
        entry: "/usr/bin/python3.11",
        args: &[],
        // PYTHONHOME spares Python from guessing its prefix from /proc/self/exe, which the
        // VMM may not emulate; the image is read-only, so no .pyc files.
        env: &[("PYTHONHOME", "/usr"), ("PYTHONDONTWRITEBYTECODE", "1")],
        ports: &[],
        writable: &["/tmp"],
        files: &[],
        generated: &[],
    },
    Def {
        name: "redis",
        version: 1,
        description: "Redis 7.0 server on 127.0.0.1:6379, no persistence",
        // In Debian, /usr/bin/redis-server is a symlink to redis-check-rdb from redis-tools.
        packages: &[
            "libc6",
            "libgcc-s1",
            "libstdc++6",
            "libatomic1",
            "liblzf1",
            "libjemalloc2",
            "libssl3",
            "libsystemd0",
            "libcap2",
            "libgcrypt20",
            "libgpg-error0",
            "liblz4-1",
            "liblzma5",
            "libzstd1",
            "redis-tools",
            "redis-server",
        ],
        entry: "/usr/bin/redis-server",
        args: &["/etc/redis/ditto.conf"],
        env: &[],
        ports: &[6379],
        writable: &["/var/lib/redis", "/tmp"],
        files: &[("/etc/redis/ditto.conf", REDIS_CONF)],
        generated: &[],
    },
    Def {
        name: "nginx",
        version: 1,
        description: "nginx 1.22, one process with a thread pool, on 127.0.0.1:8080",
        // nginx-light and nginx-core are empty transitional packages in bookworm; the binary
        // is in `nginx`, mime.types in `nginx-common`.
        packages: &[
            "libc6",
            "libgcc-s1",
            "libcrypt1",
            "libpcre2-8-0",
            "libssl3",
            "zlib1g",
            "nginx-common",
            "nginx",
        ],
        entry: "/usr/sbin/nginx",
        // -e stderr: nginx opens its built-in error log before it reads the configuration.
        args: &["-c", "/etc/nginx/ditto.conf", "-e", "stderr"],
        env: &[],
        ports: &[8080],
        // /etc/nginx and /srv/www are writable so a run can change the port or
        // serve its own files from its state directory.
        writable: &["/var/lib/nginx", "/tmp", "/etc/nginx", "/srv/www"],
        files: &[
            ("/etc/nginx/ditto.conf", NGINX_CONF),
            ("/srv/www/index.html", NGINX_INDEX),
        ],
        generated: &[],
    },
    Def {
        name: "pbzip2",
        version: 1,
        description: "parallel bzip2; pass its arguments after --, e.g. -p4 -c FILE",
        packages: &["libc6", "libgcc-s1", "libstdc++6", "libbz2-1.0", "pbzip2"],
        entry: "/usr/bin/pbzip2",
        args: &[],
        env: &[],
        ports: &[],
        writable: &["/data", "/tmp"],
        files: &[],
        generated: &[],
    },
    Def {
        name: "mongoose",
        version: 1,
        description: "civetweb 1.15 (the mongoose web server's successor) serving static files \
                      on 127.0.0.1:8081",
        // libcivetweb1 also ships libcivetweb-cpp (C++ wrapper, needs libstdc++), which
        // civetweb does not load; the C library needs only libc.
        packages: &["libc6", "libgcc-s1", "libcivetweb1", "civetweb"],
        entry: "/usr/bin/civetweb",
        // civetweb reads a configuration file given as its first argument and then
        // `-option value` pairs, which override the file's values (`-- -num_threads 16`),
        // except for list options such as listening_ports, which they extend: a second
        // `-listening_ports` adds a port. To move the server off 8081, a run puts its own
        // ditto.conf in STATE/etc/civetweb (the state directory wins over the image).
        args: &["/etc/civetweb/ditto.conf"],
        env: &[],
        ports: &[8081],
        writable: &["/tmp", "/etc/civetweb"],
        files: &[("/etc/civetweb/ditto.conf", CIVETWEB_CONF)],
        // The thesis's file sizes.
        generated: &[
            ("/srv/www/1k.html", 1 << 10),
            ("/srv/www/50k.html", 50 << 10),
            ("/srv/www/100k.html", 100 << 10),
            ("/srv/www/200k.html", 200 << 10),
        ],
    },
    // The compatibility corpus (tests/compat.rs): programs nobody tuned ditto for.
    Def {
        name: "pigz",
        version: 1,
        description: "pigz 2.6, parallel gzip; pass its arguments after --",
        packages: &["libc6", "libgcc-s1", "zlib1g", "pigz"],
        entry: "/usr/bin/pigz",
        args: &[],
        env: &[],
        ports: &[],
        writable: &["/tmp"],
        files: &[],
        generated: &[],
    },
    Def {
        name: "zstd",
        version: 1,
        description: "zstd 1.5.4 (multithreaded with -T); pass its arguments after --",
        packages: &[
            "libc6",
            "libgcc-s1",
            "libstdc++6",
            "liblz4-1",
            "liblzma5",
            "zlib1g",
            "libzstd1",
            "zstd",
        ],
        entry: "/usr/bin/zstd",
        args: &[],
        env: &[],
        ports: &[],
        writable: &["/tmp"],
        files: &[],
        generated: &[],
    },
    Def {
        name: "lbzip2",
        version: 1,
        description: "lbzip2 2.5, parallel bzip2; pass its arguments after --",
        packages: &["libc6", "libgcc-s1", "lbzip2"],
        entry: "/usr/bin/lbzip2",
        args: &[],
        env: &[],
        ports: &[],
        writable: &["/tmp"],
        files: &[],
        generated: &[],
    },
    Def {
        name: "7zip",
        version: 1,
        description: "7-Zip 22.01 (7zz, multithreaded with -mmt); pass its arguments after --",
        packages: &["libc6", "libgcc-s1", "libstdc++6", "7zip"],
        entry: "/usr/bin/7zz",
        args: &[],
        env: &[],
        ports: &[],
        writable: &["/tmp"],
        files: &[],
        generated: &[],
    },
    Def {
        name: "fasttree",
        version: 1,
        description: "FastTree 2.1 with OpenMP (fasttreeMP); pass its arguments after --",
        packages: &["libc6", "libgcc-s1", "libgomp1", "fasttree"],
        entry: "/usr/bin/fasttreeMP",
        args: &[],
        env: &[],
        ports: &[],
        writable: &["/tmp"],
        files: &[],
        generated: &[],
    },
    Def {
        name: "graphicsmagick",
        version: 1,
        description: "GraphicsMagick 1.4 (gm) with OpenMP; pass its arguments after --",
        // The shared-library closure of `gm` (apt-cache depends --recurse, Depends only).
        packages: &[
            "libc6",
            "libgcc-s1",
            "libstdc++6",
            "libgomp1",
            "graphicsmagick",
            "libgraphicsmagick-q16-3",
            "libaom3",
            "libbrotli1",
            "libbsd0",
            "libbz2-1.0",
            "libdav1d6",
            "libde265-0",
            "libdeflate0",
            "libfreetype6",
            "libheif1",
            "libhwy1",
            "libicu72",
            "libjbig0",
            "libjpeg62-turbo",
            "libjxl0.7",
            "liblcms2-2",
            "liblerc4",
            "liblzma5",
            "libmd0",
            "libnuma1",
            "libpng16-16",
            "libtiff6",
            "libwebp7",
            "libwebpmux3",
            "libwmflite-0.2-7",
            "libx11-6",
            "libx265-199",
            "libxau6",
            "libxcb1",
            "libxdmcp6",
            "libxext6",
            "libxml2",
            "libzstd1",
            "zlib1g",
        ],
        entry: "/usr/bin/gm",
        args: &[],
        env: &[],
        ports: &[],
        writable: &["/tmp"],
        files: &[],
        generated: &[],
    },
    Def {
        name: "webhook",
        version: 1,
        description: "webhook 2.8, a Go HTTP server that runs commands on requests",
        packages: &["libc6", "libgcc-s1", "webhook"],
        entry: "/usr/bin/webhook",
        args: &[],
        env: &[],
        ports: &[],
        writable: &["/tmp"],
        files: &[],
        generated: &[],
    },
    Def {
        name: "python3-stdlib",
        version: 1,
        description: "Python 3.11 with the full standard library (concurrent.futures...)",
        packages: &[
            "libc6",
            "libgcc-s1",
            "zlib1g",
            "libexpat1",
            "libffi8",
            "libbz2-1.0",
            "liblzma5",
            "libuuid1",
            "media-types",
            "libpython3.11-minimal",
            "python3.11-minimal",
            "libpython3.11-stdlib",
        ],
        entry: "/usr/bin/python3.11",
        args: &[],
        env: &[("PYTHONHOME", "/usr"), ("PYTHONDONTWRITEBYTECODE", "1")],
        ports: &[],
        writable: &["/tmp"],
        files: &[],
        generated: &[],
    },
    Def {
        name: "nodejs",
        version: 1,
        description: "Node.js 18 (Debian's) with worker_threads",
        packages: &[
            "libc6",
            "libgcc-s1",
            "libstdc++6",
            "zlib1g",
            "libssl3",
            "libuv1",
            "libicu72",
            "libc-ares2",
            "libnghttp2-14",
            "libbrotli1",
            "node-acorn",
            "node-cjs-module-lexer",
            "node-undici",
            "libnode108",
            "nodejs",
        ],
        entry: "/usr/bin/node",
        args: &[],
        env: &[],
        ports: &[],
        writable: &["/tmp"],
        files: &[],
        generated: &[],
    },
];

/// Redis without fork-based persistence, which a process VM cannot do.
const REDIS_CONF: &str = "\
bind 127.0.0.1
port 6379
protected-mode yes
daemonize no
supervised no
save \"\"
appendonly no
dir /var/lib/redis
logfile \"\"
databases 16
enable-debug-command local
";

/// The thesis's nginx setup: one process, no master, file I/O on a thread pool.
const NGINX_CONF: &str = "\
master_process off;
daemon off;
worker_processes 1;
error_log stderr;
pid /var/lib/nginx/nginx.pid;
thread_pool default threads=4;

events {
    worker_connections 256;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    sendfile off;
    aio threads;
    client_body_temp_path /var/lib/nginx/body;
    proxy_temp_path /var/lib/nginx/proxy;
    fastcgi_temp_path /var/lib/nginx/fastcgi;
    uwsgi_temp_path /var/lib/nginx/uwsgi;
    scgi_temp_path /var/lib/nginx/scgi;

    server {
        listen 127.0.0.1:8080;
        root /srv/www;
        index index.html;
    }
}
";

const NGINX_INDEX: &str = "<!DOCTYPE html>\n<html><body><h1>ditto</h1></body></html>\n";

/// civetweb with a fixed pool of worker threads, keep-alive on, no logs (nothing written).
/// tcp_nodelay: civetweb sends the headers and the body of a response in separate writes, so
/// with Nagle's algorithm every keep-alive response waits for the client's delayed ACK
/// (~40 ms on Linux) and each worker serves ~25 requests a second whatever the host.
const CIVETWEB_CONF: &str = "\
listening_ports 127.0.0.1:8081
document_root /srv/www
num_threads 8
enable_keep_alive yes
tcp_nodelay 1
enable_directory_listing no
";

/// `size` bytes of deterministic printable text: lines of 63 hex digits and a newline, the
/// digits from a 64-bit LCG seeded with `size`, so every file differs and never changes.
pub fn generated_text(size: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut x = size as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = String::with_capacity(size);
    for i in 0..size {
        if i % 64 == 63 {
            out.push('\n');
        } else {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            out.push(char::from(HEX[(x >> 60) as usize]));
        }
    }
    out
}

/// Files every image gets: glibc's name lookups (getpwnam, which nginx and others call at
/// start-up) read these, and without them the lookups fail instead of finding root/nobody.
const BASE_FILES: &[(&str, &str)] = &[
    (
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    ),
    (
        "/etc/group",
        "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n",
    ),
    ("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
    (
        "/etc/nsswitch.conf",
        "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
    ),
];

/// Environment every image gets (a recipe's own entries win).
const BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/tmp"),
    ("LANG", "C.UTF-8"),
];

fn to_recipe(d: &Def) -> Recipe {
    let mut env: BTreeMap<String, String> = BASE_ENV
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.extend(
        d.env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let files = BASE_FILES
        .iter()
        .map(|(p, c)| (p, c, 0o644))
        .chain(d.files.iter().map(|(p, c)| (p, c, 0o644)))
        .map(|(p, c, mode)| RecipeFile {
            path: (*p).to_owned(),
            mode,
            contents: (*c).to_owned(),
        })
        .chain(d.generated.iter().map(|(p, size)| RecipeFile {
            path: (*p).to_owned(),
            mode: 0o644,
            contents: generated_text(*size),
        }))
        .collect();
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    Recipe {
        name: d.name.to_owned(),
        version: d.version,
        description: d.description.to_owned(),
        packages: strings(d.packages),
        entry: d.entry.to_owned(),
        args: strings(d.args),
        env,
        ports: d.ports.to_vec(),
        writable: strings(d.writable),
        files,
    }
}

/// All recipes, in table order.
pub fn all() -> Vec<Recipe> {
    RECIPES.iter().map(to_recipe).collect()
}

/// The recipe called `name`, or [`ImageError::UnknownImage`] listing the known names.
pub fn find(name: &str) -> Result<Recipe, ImageError> {
    RECIPES
        .iter()
        .find(|d| d.name == name)
        .map(to_recipe)
        .ok_or_else(|| ImageError::UnknownImage {
            name: name.to_owned(),
            known: RECIPES
                .iter()
                .map(|d| d.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

impl Recipe {
    /// Checks what the builder relies on: a sane name, absolute in-image paths without "..",
    /// and package names apt-get cannot mistake for options.
    pub fn validate(&self) -> Result<(), ImageError> {
        let bad = |reason: String| ImageError::InvalidRecipe {
            recipe: self.name.clone(),
            reason,
        };
        let name_ok =
            self.name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && self.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
        if !name_ok {
            return Err(bad("the name must match [a-z0-9][a-z0-9_-]*".into()));
        }
        if self.packages.is_empty() {
            return Err(bad("no packages".into()));
        }
        for p in &self.packages {
            let ok = p
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.:".contains(&b));
            if !ok {
                return Err(bad(format!("{p:?} is not a Debian package name")));
            }
        }
        let paths = std::iter::once(&self.entry)
            .chain(&self.writable)
            .chain(self.files.iter().map(|f| &f.path));
        for p in paths {
            super::fsutil::image_rel(p).map_err(bad)?;
        }
        for f in &self.files {
            if f.mode & !0o7777 != 0 {
                return Err(bad(format!(
                    "{}: mode {:o} is not permission bits",
                    f.path, f.mode
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recipe_is_valid_and_unique() {
        let all = all();
        for r in &all {
            r.validate().unwrap();
            assert_eq!(all.iter().filter(|o| o.name == r.name).count(), 1);
        }
        let names: Vec<_> = all.iter().map(|r| r.name.as_str()).collect();
        for want in ["busybox", "python3", "redis", "nginx", "pbzip2", "mongoose"] {
            assert!(names.contains(&want), "{want} missing");
        }
    }

    #[test]
    fn unknown_name_lists_known_ones() {
        let e = find("nope").unwrap_err().to_string();
        assert!(
            e.contains("nope") && e.contains("redis") && e.contains("busybox"),
            "{e}"
        );
    }

    #[test]
    fn recipe_env_overrides_base_env() {
        let py = find("python3").unwrap();
        assert_eq!(py.env["PYTHONHOME"], "/usr");
        assert!(py.env.contains_key("PATH"));
        assert!(py.files.iter().any(|f| f.path == "/etc/passwd"));
    }

    #[test]
    fn validate_refuses_bad_input() {
        let mut r = find("busybox").unwrap();
        r.packages.push("--option".into());
        assert!(r.validate().is_err());
        let mut r = find("busybox").unwrap();
        r.entry = "bin/busybox".into();
        assert!(r.validate().is_err());
        let mut r = find("busybox").unwrap();
        r.writable.push("/var/../../etc".into());
        assert!(r.validate().is_err());
        let mut r = find("busybox").unwrap();
        r.name = "Bad/Name".into();
        assert!(r.validate().is_err());
    }

    #[test]
    fn redis_config_has_what_the_design_needs() {
        let r = find("redis").unwrap();
        let conf = &r
            .files
            .iter()
            .find(|f| f.path == "/etc/redis/ditto.conf")
            .unwrap()
            .contents;
        for line in [
            "bind 127.0.0.1",
            "port 6379",
            "save \"\"",
            "appendonly no",
            "daemonize no",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line}");
        }
        let n = find("nginx").unwrap();
        let conf = &n
            .files
            .iter()
            .find(|f| f.path == "/etc/nginx/ditto.conf")
            .unwrap()
            .contents;
        for line in [
            "master_process off;",
            "daemon off;",
            "thread_pool default threads=4;",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line}");
        }
    }

    #[test]
    fn mongoose_serves_the_thesis_file_sizes() {
        let m = find("mongoose").unwrap();
        let conf = &m
            .files
            .iter()
            .find(|f| f.path == "/etc/civetweb/ditto.conf")
            .unwrap()
            .contents;
        for line in [
            "listening_ports 127.0.0.1:8081",
            "document_root /srv/www",
            "tcp_nodelay 1",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line}");
        }
        assert_eq!(m.args, ["/etc/civetweb/ditto.conf"]);
        for (name, size) in [
            ("1k", 1024),
            ("50k", 51_200),
            ("100k", 102_400),
            ("200k", 204_800),
        ] {
            let f = m
                .files
                .iter()
                .find(|f| f.path == format!("/srv/www/{name}.html"))
                .unwrap();
            assert_eq!(f.contents.len(), size, "{name}");
            assert_eq!(f.contents, generated_text(size));
            assert!(f
                .contents
                .lines()
                .all(|l| l.len() == 63 || l.len() == size % 64));
        }
        assert_ne!(generated_text(1024)[..64], generated_text(2048)[..64]);
    }
}
