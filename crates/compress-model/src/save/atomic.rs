//! Atomic file output: write a temporary file beside the target, flush it to disk, rename it.
//!
//! A rename within one directory replaces the target in one step on POSIX file systems (and on
//! NTFS), so a reader sees either the old file or the complete new one — never a prefix. When
//! the writer fails or panics the temporary file is removed; when the process is killed
//! outright the temporary (a hidden `.NAME.partial-PID-N` file) may remain, but the target path
//! is never a half-written file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::ModelError;

/// Removes the temporary file (or directory) unless the write completed.
struct TempGuard {
    path: PathBuf,
    dir: bool,
    done: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if !self.done {
            let _ = if self.dir {
                std::fs::remove_dir_all(&self.path)
            } else {
                std::fs::remove_file(&self.path)
            };
        }
    }
}

/// The temporary path used while writing `target`: hidden, in the same directory (so the
/// final rename never crosses file systems), unique per process and call.
pub fn temp_path_for(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    target.with_file_name(format!(".{name}.partial-{}-{n}", std::process::id()))
}

/// Writes `target` atomically: `write` fills a temporary file (given its path), which is then
/// synced to disk and renamed over `target`. On any error — from `write`, from syncing or from
/// the rename — the temporary file is removed and `target` is left as it was.
///
/// ```
/// # fn main() -> Result<(), compress_model::ModelError> {
/// let dir = tempfile::tempdir().unwrap();
/// let target = dir.path().join("out.txt");
/// compress_model::save::write_atomic(&target, |tmp| {
///     std::fs::write(tmp, b"complete").map_err(|source| compress_model::ModelError::Io {
///         path: tmp.to_path_buf(),
///         source,
///     })
/// })?;
/// assert_eq!(std::fs::read(&target).unwrap(), b"complete");
/// # Ok(()) }
/// ```
pub fn write_atomic(
    target: &Path,
    write: impl FnOnce(&Path) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(ModelError::Io {
                path: target.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("the directory {} does not exist", dir.display()),
                ),
            });
        }
    }
    let mut guard = TempGuard {
        path: temp_path_for(target),
        dir: false,
        done: false,
    };
    write(&guard.path)?;
    std::fs::File::open(&guard.path)
        .and_then(|f| f.sync_all())
        .map_err(io(&guard.path))?;
    std::fs::rename(&guard.path, target).map_err(io(target))?;
    guard.done = true;
    // Make the rename itself durable (best effort: not every platform can open a directory).
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes the directory `target` atomically: `write` fills a temporary directory beside it,
/// whose files are synced and which is then renamed to `target`. `target` must not exist (a
/// directory cannot be replaced in one step); on any error nothing is left behind.
pub fn write_atomic_dir(
    target: &Path,
    write: impl FnOnce(&Path) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    if target.exists() {
        return Err(ModelError::Io {
            path: target.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the output directory exists; remove it or choose another name",
            ),
        });
    }
    let guard_path = temp_path_for(target);
    std::fs::create_dir(&guard_path).map_err(io(&guard_path))?;
    let mut guard = TempGuard {
        path: guard_path,
        dir: true,
        done: false,
    };
    write(&guard.path)?;
    for entry in std::fs::read_dir(&guard.path).map_err(io(&guard.path))? {
        let path = entry.map_err(io(&guard.path))?.path();
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io(&path))?;
    }
    std::fs::rename(&guard.path, target).map_err(io(target))?;
    guard.done = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn failed_write_leaves_neither_target_nor_temp() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model.bin");
        let err = write_atomic(&target, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(ModelError::InvalidInput("disk full (simulated)".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("simulated"));
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
    }

    #[test]
    fn panicking_writer_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model.bin");
        std::fs::write(&target, b"old").unwrap();
        let result = std::panic::catch_unwind(|| {
            let _ = write_atomic(&target, |tmp| {
                std::fs::write(tmp, b"new but incomplete").unwrap();
                panic!("writer crashed");
            });
        });
        assert!(result.is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(leftovers(dir.path()), vec!["model.bin".to_string()]);
    }

    #[test]
    fn directories_are_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ckpt");
        let err = write_atomic_dir(&target, |tmp| {
            std::fs::write(tmp.join("config.json"), b"{}").unwrap();
            Err(ModelError::InvalidInput(
                "failed halfway (simulated)".into(),
            ))
        });
        assert!(err.is_err());
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
        write_atomic_dir(&target, |tmp| {
            std::fs::write(tmp.join("config.json"), b"{}").map_err(|source| ModelError::Io {
                path: tmp.to_path_buf(),
                source,
            })
        })
        .unwrap();
        assert_eq!(std::fs::read(target.join("config.json")).unwrap(), b"{}");
        let again = write_atomic_dir(&target, |_| Ok(())).unwrap_err();
        assert!(again.to_string().contains("exists"), "{again}");
    }

    #[test]
    fn missing_directory_is_named() {
        let err = write_atomic(Path::new("/nonexistent-dir-xyz/out.bin"), |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("nonexistent-dir-xyz"), "{err}");
    }
}
