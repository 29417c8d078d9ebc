//! The one error type of the image builder.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while building, opening or extending an image.
///
/// Each variant names the thing at fault (image, package, .deb file, library, path) so that
/// the message alone tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image name is not one of the recipes.
    #[error("unknown image {name:?}; known images: {known}")]
    UnknownImage {
        /// The name asked for.
        name: String,
        /// The known recipe names, comma separated.
        known: String,
    },
    /// A recipe is malformed (bad name, path or package name).
    #[error("invalid recipe {recipe:?}: {reason}")]
    InvalidRecipe {
        /// The recipe's name.
        recipe: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A helper program (apt-get, dpkg-deb, tar) could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why it could not be started.
        #[source]
        source: std::io::Error,
    },
    /// apt-get could not resolve or download a package.
    #[error("downloading package {package} failed: {stderr}")]
    Download {
        /// The package (or packages, comma separated, when apt-get does not say which).
        package: String,
        /// What apt-get wrote to stderr.
        stderr: String,
    },
    /// `apt-get update` into ditto's own package lists failed, and there are no older lists.
    #[error("updating package lists in {} failed: {reason}", lists.display())]
    ListsUpdate {
        /// ditto's lists directory.
        lists: PathBuf,
        /// apt-get's errors, on one line.
        reason: String,
    },
    /// A downloaded .deb does not have the hash the archive index promised.
    #[error(
        "package {package}: {} has sha256 {actual}, but the archive index says {expected}",
        file.display()
    )]
    HashMismatch {
        /// The package.
        package: String,
        /// The downloaded file.
        file: PathBuf,
        /// The hash from the index.
        expected: String,
        /// The hash of the file.
        actual: String,
    },
    /// dpkg-deb or tar failed to unpack a .deb.
    #[error("unpacking {} failed: {stderr}", deb.display())]
    Extract {
        /// The .deb file.
        deb: PathBuf,
        /// What dpkg-deb and tar wrote to stderr.
        stderr: String,
    },
    /// An ELF in the image needs a shared library that is not in the image.
    #[error("library {library}, needed by {needed_by}, is not in the image")]
    MissingLibrary {
        /// The DT_NEEDED name.
        library: String,
        /// The path (inside the image) of the ELF that needs it.
        needed_by: String,
    },
    /// An ELF in the image names a program interpreter (PT_INTERP) that is not in the image.
    #[error("interpreter {interpreter}, needed by {needed_by}, is not in the image")]
    MissingInterpreter {
        /// The PT_INTERP path.
        interpreter: String,
        /// The path (inside the image) of the ELF that needs it.
        needed_by: String,
    },
    /// A user binary needs a library that neither the image nor the host has.
    #[error("library {library}, needed by {}, is neither in the image nor on the host", needed_by.display())]
    HostLibraryMissing {
        /// The DT_NEEDED name (or PT_INTERP path).
        library: String,
        /// The host path of the ELF that needs it.
        needed_by: PathBuf,
    },
    /// The recipe's entry command is not a file in the image.
    #[error("entry {entry} is not a file in the image")]
    MissingEntry {
        /// The entry path inside the image.
        entry: String,
    },
    /// A file that must be a usable ELF is not one.
    #[error("{}: {reason}", path.display())]
    BadElf {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file given to `add_files` cannot be added.
    #[error("cannot add {}: {reason}", path.display())]
    BadUserFile {
        /// The file as given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An image's files no longer match the tree hash recorded when it was built.
    #[error("image {} was changed after it was built (tree sha256 {actual}, manifest says {expected})", root.display())]
    Changed {
        /// The image root.
        root: PathBuf,
        /// The hash in the manifest.
        expected: String,
        /// The hash of the files now.
        actual: String,
    },
    /// A manifest could not be written or read back.
    #[error("manifest {}: {source}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// A file-system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Attaches the path to an I/O error, so every `Io` error says where it happened.
pub(crate) trait IoContext<T> {
    /// Converts the error into [`ImageError::Io`] naming `path`.
    fn at(self, path: &Path) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for Result<T, std::io::Error> {
    fn at(self, path: &Path) -> Result<T, ImageError> {
        self.map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
