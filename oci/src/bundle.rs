//! An OCI bundle's spec file: read it, and replace it atomically (a temporary file in the
//! bundle, then rename), so the runtime never reads a half-written spec.

use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0} is not JSON: {1}")]
    Parse(PathBuf, serde_json::Error),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

pub struct Spec {
    pub path: PathBuf,
    pub value: Value,
}

/// The spec's path: `config_file` (crun's `--config`) or config.json, in the bundle.
pub fn spec_path(bundle: &Path, config_file: Option<&Path>) -> PathBuf {
    bundle.join(config_file.unwrap_or(Path::new("config.json")))
}

pub fn read(path: &Path) -> Result<Spec, BundleError> {
    let text = std::fs::read(path).map_err(|e| BundleError::Read(path.into(), e))?;
    let value = serde_json::from_slice(&text).map_err(|e| BundleError::Parse(path.into(), e))?;
    Ok(Spec {
        path: path.into(),
        value,
    })
}

impl Spec {
    /// Replaces the file with the spec, keeping its permissions.
    pub fn write(&self) -> Result<(), BundleError> {
        let err = |e| BundleError::Write(self.path.clone(), e);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.slim-oci.{}", std::process::id()));
        let result = (|| {
            let mode = std::fs::metadata(&self.path)?.permissions().mode();
            let mut f = std::fs::File::create(&tmp)?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            serde_json::to_writer(&mut f, &self.value)?;
            f.flush()?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_and_keeps_mode() {
        let dir = std::env::temp_dir().join(format!("slim-oci-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = spec_path(&dir, None);
        std::fs::write(&path, br#"{"b": 1, "a": 2}"#).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut spec = read(&path).unwrap();
        spec.value["c"] = Value::from(3);
        spec.write().unwrap();
        // Key order is kept (serde_json's preserve_order).
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            r#"{"b":1,"a":2,"c":3}"#
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        assert_eq!(
            spec_path(&dir, Some(Path::new("x.json"))),
            dir.join("x.json")
        );
        std::fs::write(&path, b"{").unwrap();
        assert!(matches!(read(&path), Err(BundleError::Parse(..))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
