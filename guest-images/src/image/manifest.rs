//! `ditto-manifest.json`: what an image is and how to run it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{ImageError, IoContext};

/// The manifest written at the top of every image root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The builder's format version ([`super::FORMAT_VERSION`]) that wrote it.
    pub format: u32,
    /// The image (recipe) name.
    pub name: String,
    /// The recipe's hand-maintained version.
    pub recipe_version: u32,
    /// sha256 of the recipe definition; tells whether an image is stale after a recipe edit.
    pub recipe_hash: String,
    /// This image's content key (sha256, hex): the cache key it is stored under.
    pub key: String,
    /// Content key of the image built from the recipe alone; equals `key` unless user files
    /// were added.
    pub recipe_key: String,
    /// Absolute path, inside the image, of the program to run.
    pub entry: String,
    /// Default arguments.
    pub args: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// TCP ports the program listens on.
    pub ports: Vec<u16>,
    /// Directories the program writes to.
    pub writable: Vec<String>,
    /// The Debian packages unpacked, in order.
    pub packages: Vec<Package>,
    /// Files added with `add_files`.
    #[serde(default)]
    pub user_files: Vec<AddedFile>,
    /// Libraries copied from the host because user files needed them.
    #[serde(default)]
    pub host_libraries: Vec<AddedFile>,
    /// Hash over the image's whole tree (see [`super::Image::verify`]).
    pub tree_sha256: String,
}

/// One unpacked Debian package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Exact version, epoch included.
    pub version: String,
    /// Architecture.
    pub arch: String,
    /// The .deb file name in the download cache.
    pub file: String,
    /// sha256 of the .deb.
    pub sha256: String,
}

/// A file put into the image from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedFile {
    /// Absolute path inside the image.
    pub path: String,
    /// Where it came from on the host when it was first added (informational: the content
    /// key depends on the contents, not on this).
    pub source: String,
    /// sha256 of the contents.
    pub sha256: String,
}

impl Manifest {
    /// Serialises the manifest as pretty JSON.
    pub fn to_json(&self, path: &Path) -> Result<Vec<u8>, ImageError> {
        let mut v = serde_json::to_vec_pretty(self).map_err(|source| ImageError::Manifest {
            path: path.to_path_buf(),
            source,
        })?;
        v.push(b'\n');
        Ok(v)
    }

    /// Reads a manifest file.
    pub fn read(path: &Path) -> Result<Manifest, ImageError> {
        let bytes = std::fs::read(path).at(path)?;
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Manifest {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_missing_user_lists() {
        let m = Manifest {
            format: 1,
            name: "x".into(),
            recipe_version: 1,
            recipe_hash: "r".into(),
            key: "k".into(),
            recipe_key: "k".into(),
            entry: "/bin/x".into(),
            args: vec!["a".into()],
            env: BTreeMap::from([("A".into(), "1".into())]),
            ports: vec![80],
            writable: vec!["/tmp".into()],
            packages: vec![Package {
                name: "p".into(),
                version: "1:2".into(),
                arch: "amd64".into(),
                file: "p_1%3a2_amd64.deb".into(),
                sha256: "00".into(),
            }],
            user_files: vec![],
            host_libraries: vec![],
            tree_sha256: "t".into(),
        };
        let json = m.to_json(Path::new("m")).unwrap();
        let back: Manifest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, m);
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let obj = v.as_object_mut().unwrap();
        obj.remove("user_files");
        obj.remove("host_libraries");
        let back: Manifest = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }
}
