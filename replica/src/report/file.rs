//! Reading a report back ([`Report::load`], [`Report::parse`]) and writing it atomically
//! ([`Report::save`]).

use std::fs;
use std::io::{self, Read, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Report, ReportError, MAX_REPORT_FILE, REPORT_SCHEMA};

impl Report {
    /// Reads a report, checking its schema number before its fields.
    pub fn load(path: impl AsRef<Path>) -> Result<Report, ReportError> {
        let path = path.as_ref();
        let io_err = |source| ReportError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut text = Vec::new();
        fs::File::open(path)
            .and_then(|f| f.take(MAX_REPORT_FILE + 1).read_to_end(&mut text))
            .map_err(io_err)?;
        if text.len() as u64 > MAX_REPORT_FILE {
            return Err(io_err(io::Error::other(format!(
                "larger than {} MiB, not a report",
                MAX_REPORT_FILE >> 20
            ))));
        }
        Self::parse(path, &text)
    }

    /// Reads a report from its JSON text, checking its schema number before its fields;
    /// `path` only names the text in errors.
    pub fn parse(path: impl AsRef<Path>, text: &[u8]) -> Result<Report, ReportError> {
        let path = path.as_ref();
        let parse_err = |source| ReportError::Parse {
            path: path.to_path_buf(),
            source,
        };
        let json: serde_json::Value = serde_json::from_slice(text).map_err(parse_err)?;
        match json.get("schema").and_then(serde_json::Value::as_u64) {
            Some(n) if n == u64::from(REPORT_SCHEMA) => {}
            found => {
                return Err(ReportError::Schema {
                    path: path.to_path_buf(),
                    found,
                })
            }
        }
        // Parsed again from the text so that a bad field's error has its line and column.
        serde_json::from_slice(text).map_err(parse_err)
    }

    /// Writes the report as pretty JSON, atomically: to a temporary file in the same
    /// directory, then renamed over `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ReportError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = path.as_ref();
        let write_err = |source| ReportError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| write_err(e.into()))?;
        json.push(b'\n');
        let name = path.file_name().ok_or_else(|| {
            write_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a file name",
            ))
        })?;
        let tmp = path.with_file_name(format!(
            ".{}.{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let written = fs::File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(&json)?;
                f.sync_all()
            })
            .and_then(|()| fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(write_err(e));
        }
        Ok(())
    }
}
