//! A folder laid out as Kubernetes mounts a Secret or ConfigMap: each file
//! is a symlink through `..data`, itself a symlink to a versioned folder; an
//! update writes a new folder and renames `..data` over the old one, so a
//! reader sees the old files or the new ones, never a mix.

use std::path::PathBuf;

use super::{IssuedPair, scratch_dir};

pub struct MountedSecret {
    pub dir: PathBuf,
    generation: u32,
}

impl MountedSecret {
    /// The folder holding `files` (name, contents).
    pub fn with_files(files: &[(&str, &str)]) -> Self {
        let mut secret = Self {
            dir: scratch_dir("secret"),
            generation: 0,
        };
        secret.replace(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), secret.file(name))
                .expect("file symlink");
        }
        secret
    }

    /// A mounted TLS Secret: `tls.crt` and `tls.key`.
    pub fn new(pair: &IssuedPair) -> Self {
        Self::with_files(&[("tls.crt", &pair.cert_pem), ("tls.key", &pair.key_pem)])
    }

    /// The path a reader opens for `name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn cert_file(&self) -> PathBuf {
        self.file("tls.crt")
    }

    pub fn key_file(&self) -> PathBuf {
        self.file("tls.key")
    }

    /// The kubelet's update of a TLS Secret.
    pub fn update(&mut self, pair: &IssuedPair) {
        self.replace(&[("tls.crt", &pair.cert_pem), ("tls.key", &pair.key_pem)]);
    }

    /// The kubelet's update: a new versioned folder, then `..data` renamed over.
    pub fn replace(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let version = format!("..2026_12_04_{:02}", self.generation);
        let folder = self.dir.join(&version);
        std::fs::create_dir(&folder).expect("secret version folder");
        for (name, contents) in files {
            std::fs::write(folder.join(name), contents).expect("secret file");
        }
        let staged = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&staged);
        std::os::unix::fs::symlink(&version, &staged).expect("staged symlink");
        std::fs::rename(&staged, self.dir.join("..data")).expect("swap ..data");
    }
}
