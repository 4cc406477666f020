//! The system layer, a leaf: network namespaces (entering, creating, veth
//! and addresses for the lab and tests), interface facts, and the private
//! directories sgctl keeps its state in. It imports nothing of the crate.

pub mod ifinfo;
pub mod mounts;
pub mod netns;
pub mod private_dir;

/// Whether `name` can be one path segment of ours (a file name, a store
/// key segment): 1 to `max` letters, digits, `-`, `_` or `.`, not starting
/// with `.` (so never `.` or `..`, never hidden).
pub fn is_plain_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An I/O error on a path, with what was being done to it ("creating
/// /run/netns: Permission denied").
#[derive(Debug, thiserror::Error)]
#[error("{action} {}", .path.display())]
pub struct PathError {
    pub action: &'static str,
    pub path: std::path::PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl PathError {
    /// A `map_err` for an operation `action` on `path`.
    pub fn on(
        action: &'static str,
        path: impl Into<std::path::PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> PathError {
        let path = path.into();
        move |source| PathError {
            action,
            path,
            source,
        }
    }
}
