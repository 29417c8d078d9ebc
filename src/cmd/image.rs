//! `ditto image ...` and `--image NAME`: images built from Debian packages.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use guest_images::image::{self, BuildOptions, Image, ImageError};

/// `ditto image` subcommands.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build (or refresh) an image from Debian packages.
    Build {
        /// Recipe name: busybox, python3, redis, nginx, pbzip2, mongoose.
        name: String,
        /// Rebuild even if a current image exists.
        #[arg(long)]
        rebuild: bool,
    },
    /// List the recipes and which are built.
    List,
    /// Add the user's own binaries (and the libraries they need) to an image.
    Add {
        /// Image name.
        name: String,
        /// Files to add; they land in /usr/local/bin.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Arguments of `ditto image`.
#[derive(Args, Debug)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

/// Runs `ditto image ...`.
pub fn main(args: &ImageArgs) -> ExitCode {
    let opts = BuildOptions::default();
    let result = match &args.command {
        ImageCommand::Build { name, rebuild } => {
            let opts = BuildOptions {
                rebuild: *rebuild,
                ..opts
            };
            image::build(name, &opts).map(|img| println!("{}", img.root.display()))
        }
        ImageCommand::List => image::list(&opts).map(|all| {
            for s in all {
                let state = s
                    .image
                    .as_ref()
                    .map_or("not built".to_string(), |i| i.root.display().to_string());
                println!("{:<10} {:<50} {}", s.name, s.description, state);
            }
        }),
        ImageCommand::Add { name, files } => {
            image::add_files(name, files, &opts).map(|img| println!("{}", img.root.display()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ditto: image: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Bad names and bad files are the user's input (2); the rest are host trouble (1).
pub fn exit_code(e: &ImageError) -> u8 {
    match e {
        ImageError::UnknownImage { .. } | ImageError::BadUserFile { .. } => 2,
        _ => 1,
    }
}

/// Opens (building on first use) the image a run names.
pub fn open_for_run(name: &str) -> Result<Image, ImageError> {
    image::open(name, &BuildOptions::default())
}

/// Copies a directory tree (the image's initial contents of a writable directory, or a
/// pair's `--state` seed) into a run's state directory.
///
/// Modification and access times are kept, for files and directories alike: a pair seeds
/// each replica's state directory with its own copy, at its own moment, and a program
/// shows those times (a web server's Last-Modified and ETag). Copies stamped with the
/// copy's time differed whenever the two copies straddled a second, and the replicas
/// then wrote different headers of the same length (nginx and civetweb failover tests,
/// under load).
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    if !from.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let dst = to.join(entry.file_name());
        if ty.is_dir() {
            copy_tree(&entry.path(), &dst)?;
        } else if ty.is_symlink() {
            if dst.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &dst)?;
            }
        } else if !dst.exists() {
            // Files already in the state directory (a previous run's, or ones the
            // user placed there) win over the image's.
            std::fs::copy(entry.path(), &dst)?;
            keep_times(&entry.path(), &dst)?;
        }
    }
    // Last: creating the entries above changed the directory's own times.
    keep_times(from, to)
}

/// Gives `to` the modification and access times of `from`.
fn keep_times(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(from)?;
    let times = std::fs::FileTimes::new()
        .set_accessed(meta.accessed()?)
        .set_modified(meta.modified()?);
    // A directory cannot be opened for writing; read access is enough for futimens.
    std::fs::File::open(to)?.set_times(times)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// Two copies made at different moments carry the source's times, for a file and for
    /// the directories, so two replicas' state directories look alike to `stat`.
    #[test]
    fn copies_keep_the_sources_times() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("www")).unwrap();
        let file = src.path().join("www/index.html");
        std::fs::write(&file, b"hello").unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let times = std::fs::FileTimes::new()
            .set_modified(old)
            .set_accessed(old);
        for p in [&file, &src.path().join("www"), &src.path().to_path_buf()] {
            std::fs::File::open(p).unwrap().set_times(times).unwrap();
        }
        let dst = tempfile::tempdir().unwrap();
        for copy in ["a", "b"] {
            copy_tree(src.path(), &dst.path().join(copy)).unwrap();
            for rel in ["www/index.html", "www", ""] {
                let m = std::fs::metadata(dst.path().join(copy).join(rel)).unwrap();
                assert_eq!(m.modified().unwrap(), old, "{copy}/{rel}");
            }
        }
        assert_eq!(
            std::fs::read(dst.path().join("b/www/index.html")).unwrap(),
            b"hello"
        );
    }
}
