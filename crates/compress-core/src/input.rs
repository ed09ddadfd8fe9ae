//! Opening files that come from users: only regular files, and text files only up to a stated
//! size.
//!
//! A path can name a FIFO (opening it for reading blocks until a writer appears), a character
//! device (`/dev/zero` never ends) or a directory. [`open_regular`] opens without blocking
//! (`O_NONBLOCK` on Unix, which a regular file's reads ignore) and then checks what was opened
//! (`fstat`, so a path swapped between a check and the open cannot slip through), refusing
//! anything but a regular file with an error that says what the path is. [`read_text`] adds a
//! size limit before anything is allocated for the contents.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::path::Path;

/// What a non-regular path is, for messages.
fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
    }
    "not a regular file"
}

/// Opens `path` for reading if it is a regular file (following symbolic links); anything else
/// is an [`io::ErrorKind::InvalidInput`] error saying what the path is. Never blocks on a FIFO.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is {}, not a regular file", path.display(), kind(&meta)),
        ));
    }
    Ok(file)
}

/// Reads the regular file `path` as UTF-8 text of at most `limit` bytes; a larger file is an
/// [`io::ErrorKind::InvalidData`] error naming its size and the limit (nothing is allocated for
/// it).
pub fn read_text(path: &Path, limit: u64) -> io::Result<String> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is {len} bytes; files of this kind are at most {limit}",
                path.display()
            ),
        ));
    }
    let mut text = String::with_capacity(len as usize);
    // `take` also bounds a file that grows while it is read.
    file.take(limit).read_to_string(&mut text)?;
    Ok(text)
}

/// Size limit for JSON configuration files (`config.json`, safetensors indexes): 64 MiB.
pub const CONFIG_LIMIT: u64 = 64 << 20;

/// Size limit for tokenizer and recipe files: 1 GiB (the largest real `tokenizer.json` files are
/// tens of MiB).
pub const TEXT_LIMIT: u64 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_regular(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("a directory"), "{e}");
        let file = dir.path().join("a.json");
        std::fs::write(&file, "{}").unwrap();
        assert_eq!(read_text(&file, 2).unwrap(), "{}");
        let e = read_text(&file, 1).unwrap_err();
        assert!(e.to_string().contains("at most 1"), "{e}");
        #[cfg(unix)]
        {
            let e = open_regular(Path::new("/dev/zero")).unwrap_err();
            assert!(e.to_string().contains("character device"), "{e}");
        }
    }
}
