//! Shared by the podman test files: podman with the project's
//! containers.conf (or one derived from it), a busybox image without a
//! registry, and a checklist that reports every failed check at once.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

/// The project's podman settings (runc, CNI backend, rlimits this machine allows).
pub fn project_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/podman/containers.conf")
}

/// podman run with one containers.conf.
#[derive(Clone, Debug)]
pub struct Podman {
    pub conf: PathBuf,
}

impl Podman {
    pub fn project() -> Podman {
        Podman {
            conf: project_conf(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .env("CONTAINERS_CONF", &self.conf)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("could not start `podman {}`: {e}", args.join(" ")))
    }

    /// Runs podman and returns its stdout; panics with its stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`podman {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Why podman cannot run the tests here, if it cannot; with `image`,
    /// also when that image is missing.
    pub fn unavailable(&self, image: Option<&str>) -> Option<String> {
        let args: Vec<&str> = match image {
            Some(image) => vec!["image", "exists", image],
            None => vec!["version", "--format", "{{.Client.Version}}"],
        };
        let out = match Command::new("podman")
            .env("CONTAINERS_CONF", &self.conf)
            .args(&args)
            .output()
        {
            Err(e) => {
                return Some(format!(
                    "podman cannot be started ({e}); `cargo xtask setup` installs it"
                ));
            }
            Ok(out) => out,
        };
        match (out.status.code(), image) {
            (Some(0), _) => None,
            // `podman image exists`: 1 is "no such image", anything else an error.
            (Some(1), Some(image)) => Some(format!(
                "podman has no image {image}; `cargo xtask image` builds it"
            )),
            _ => Some(format!(
                "podman does not work ({}): {}; `cargo xtask setup` checks it",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }

    /// Imports busybox-static's binary with `applets` as image `tag`
    /// (no registry needed), building its rootfs under `dir`.
    pub fn import_busybox(&self, dir: &Path, tag: &str, applets: &[&str]) {
        let tar = sg_user::harness::podman::busybox_rootfs_tar(dir, applets)
            .unwrap_or_else(|e| panic!("the busybox image's rootfs: {e}"));
        self.ok(&["import", "--quiet", tar.to_str().unwrap(), tag]);
    }
}

/// Skips visibly, or fails under CI, when root or podman (`$why`: the
/// reason it cannot run, if any) is missing.
#[macro_export]
macro_rules! require_podman {
    ($why:expr) => {
        sg_user::require_root!();
        if let Some(why) = $why {
            if std::env::var_os("CI").is_some() {
                panic!("the podman tests must run under CI: {why}");
            }
            eprintln!("skipping {}: {why}", module_path!());
            return;
        }
    };
}

/// Collects failed checks so that one run reports all of them.
#[derive(Default)]
pub struct Checks {
    failed: Vec<String>,
}

impl Checks {
    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        eprintln!("{} {what}", if ok { "ok:    " } else { "FAILED:" });
        if !ok {
            self.failed.push(what);
        }
    }

    pub fn finish(self) {
        assert!(
            self.failed.is_empty(),
            "{} check(s) failed:\n  - {}",
            self.failed.len(),
            self.failed.join("\n  - ")
        );
    }
}
