//! Guest root filesystems ("images") built from Debian packages.
//!
//! An image is a directory tree a process VM runs from: the files of a few Debian packages
//! (fetched with `apt-get download` from the host's sources, through ditto's own package lists
//! in the cache (`lists.rs`), and unpacked with `dpkg-deb`, nothing installed
//! on the host), the recipe's configuration files, and `ditto-manifest.json` describing how to
//! run it. Before an image is accepted, every ELF program in it must find its interpreter and
//! all its shared libraries inside the image ([`check_closure`]).
//!
//! Images are cached by content (see `store.rs` for the layout): the key is a hash of the
//! recipe, the exact .deb files, and [`FORMAT_VERSION`]. [`build`] always asks apt for the
//! current candidate versions, so it picks up Debian updates; [`open`] uses the current image
//! for a name as it is, without apt, as long as its recipe is unchanged, so running an image is
//! fast, offline, and sees the same files every time.

mod apt;
mod builder;
mod closure;
mod error;
mod extract;
mod fsutil;
mod lists;
mod manifest;
mod progress;
pub mod recipes;
mod store;
mod user;

use std::path::{Path, PathBuf};

pub use closure::{check_closure, Closure};
pub use error::ImageError;
pub use manifest::{AddedFile, Manifest, Package};
pub use progress::ProgressMode;
pub use recipes::{Recipe, RecipeFile};

use store::Store;
use user::UserSource;

/// Version of the builder's output format. Part of every content key: bump it whenever the
/// builder would make a different tree (or manifest) from the same recipe and packages, so old
/// cache entries are not reused.
pub const FORMAT_VERSION: u32 = 1;

/// Name of the manifest file at the top of every image root.
pub const MANIFEST_FILE: &str = "ditto-manifest.json";

/// Name of the marker written last into a finished image; an image without a valid one is
/// incomplete or corrupt.
pub const MARKER_FILE: &str = ".complete";

/// A finished image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The root directory on the host.
    pub root: PathBuf,
    /// What is in it and how to run it.
    pub manifest: Manifest,
}

impl Image {
    /// Host path of the entry program (the path inside the image, joined to the root without
    /// following symlinks; resolve it in the root before opening it).
    pub fn entry_path(&self) -> PathBuf {
        self.root.join(self.manifest.entry.trim_start_matches('/'))
    }

    /// Recomputes the tree hash and compares it with the manifest: detects files changed after
    /// the build. Reads every file, so it is not done on every [`open`].
    pub fn verify(&self) -> Result<(), ImageError> {
        let actual = fsutil::tree_hash(&self.root)?;
        if actual == self.manifest.tree_sha256 {
            Ok(())
        } else {
            Err(ImageError::Changed {
                root: self.root.clone(),
                expected: self.manifest.tree_sha256.clone(),
                actual,
            })
        }
    }
}

/// Options shared by all image operations.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The cache directory; `None` means [`cache_dir`]. Tests set it to a temporary directory.
    pub cache_dir: Option<PathBuf>,
    /// How to report progress.
    pub progress: ProgressMode,
    /// Build again even if a complete cached image exists (downloaded .debs are still reused).
    pub rebuild: bool,
}

impl BuildOptions {
    /// Options that use `dir` as the cache and report nothing.
    pub fn in_dir(dir: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            cache_dir: Some(dir.into()),
            progress: ProgressMode::Quiet,
            rebuild: false,
        }
    }

    fn store(&self) -> Result<Store, ImageError> {
        Store::open(self.cache_dir.clone().unwrap_or_else(cache_dir))
    }
}

/// The default cache directory: `$DITTO_CACHE`, else `$HOME/.cache/ditto`, else
/// `<tmp>/ditto-cache` when there is no home.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DITTO_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Path::new(&home).join(".cache").join("ditto"),
        None => std::env::temp_dir().join("ditto-cache"),
    }
}

/// Builds (or finds in the cache) the image of recipe `name` and makes it the current image for
/// that name. User files added earlier are carried over onto the new image.
pub fn build(name: &str, opts: &BuildOptions) -> Result<Image, ImageError> {
    build_recipe(&recipes::find(name)?, opts)
}

/// [`build`] for a recipe that need not be in the table (tests, project-specific images).
pub fn build_recipe(recipe: &Recipe, opts: &BuildOptions) -> Result<Image, ImageError> {
    let store = opts.store()?;
    let progress = progress::Progress::new(opts.progress, &recipe.name);
    let previous = store.current(&recipe.name);
    let base = builder::recipe_image(recipe, &store, opts, &progress)?;
    let image = match previous.filter(|p| !p.manifest.user_files.is_empty()) {
        Some(prev) => user::with_user_files(
            &store,
            &base,
            &UserSource::carried_over(&prev),
            opts,
            &progress,
        )?,
        None => base,
    };
    store.set_current(&recipe.name, &image.root)?;
    progress.finish(&format!("ready at {}", image.root.display()));
    Ok(image)
}

/// The current image for recipe `name`: the cached one as it is when it is complete and was
/// built from the current recipe definition (no apt call), else a fresh [`build`].
pub fn open(name: &str, opts: &BuildOptions) -> Result<Image, ImageError> {
    let recipe = recipes::find(name)?;
    if !opts.rebuild {
        let store = opts.store()?;
        if let Some(img) = store.current(name) {
            if img.manifest.recipe_hash == builder::recipe_hash(&recipe) {
                return Ok(img);
            }
        }
    }
    build_recipe(&recipe, opts)
}

/// One line of `ditto image list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageStatus {
    /// Recipe name.
    pub name: String,
    /// What the image holds.
    pub description: String,
    /// The current image, when one is built from the current recipe (what [`open`] would
    /// return without building).
    pub image: Option<Image>,
}

/// All recipes and, for each, its current built image if any. Never builds or downloads.
pub fn list(opts: &BuildOptions) -> Result<Vec<ImageStatus>, ImageError> {
    let store = opts.store()?;
    Ok(recipes::all()
        .into_iter()
        .map(|r| {
            let hash = builder::recipe_hash(&r);
            let image = store
                .current(&r.name)
                .filter(|img| img.manifest.recipe_hash == hash);
            ImageStatus {
                name: r.name,
                description: r.description,
                image,
            }
        })
        .collect())
}

/// Adds host files to image `name`: each goes to `/usr/local/bin/<file name>`, replacing a
/// user file of the same name, together with any shared library (and interpreter) it needs
/// that the image lacks, copied from the host. The result is cached by content and becomes the
/// current image for `name`; files added before are kept.
pub fn add_files(name: &str, files: &[PathBuf], opts: &BuildOptions) -> Result<Image, ImageError> {
    let recipe = recipes::find(name)?;
    // Check the user's files before anything slow happens.
    let new: Vec<UserSource> = files
        .iter()
        .map(|f| UserSource::from_host(f))
        .collect::<Result<_, _>>()?;
    let current = open(name, opts)?;
    let store = opts.store()?;
    let progress = progress::Progress::new(opts.progress, name);
    let base_dir = store.entry_dir(name, &current.manifest.recipe_key);
    let base = match store.load(&base_dir, &current.manifest.recipe_key) {
        Some(b) => b,
        None => builder::recipe_image(&recipe, &store, opts, &progress)?,
    };
    let mut sources = UserSource::carried_over(&current);
    sources.extend(new);
    // Nothing to add at all: the recipe image itself, not an identical copy of it.
    let image = if sources.is_empty() {
        base
    } else {
        user::with_user_files(&store, &base, &sources, opts, &progress)?
    };
    store.set_current(name, &image.root)?;
    progress.finish(&format!("ready at {}", image.root.display()));
    Ok(image)
}
