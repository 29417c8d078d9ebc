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

/// Copies a directory tree (the image's initial contents of a writable directory)
/// into the run's state directory.
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
        }
    }
    Ok(())
}
