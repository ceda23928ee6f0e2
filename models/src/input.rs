//! Opening the files the tool reads. Every input (safetensors files and shards, the shard
//! index, config.json, calibration files, results files) is opened through
//! `open_input_file`, so that whatever stands where a file should be is reported as what it
//! is, naming what was expected, rather than as an OS error from deep inside a read (mapping
//! a directory gives "No such device"), as a missing file (a symbolic-link loop), or as a read
//! that never returns (a FIFO with no writer).

use std::fs::{File, FileType, Metadata};
use std::io::Read;
use std::path::Path;

use crate::error::{io, ModelError, Result};

/// Opens `path` for reading, provided it is a regular file once symbolic links are followed.
/// `expected` says what should be there ("a safetensors file"), for the error message.
/// The type is checked before opening, so a FIFO is refused instead of blocking the open.
pub fn open_input_file(path: &Path, expected: &str) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| lookup_error(path, expected, e))?;
    require(path, expected, &meta, FileType::is_file)?;
    let file = open_for_reading(path).map_err(io(path))?;
    // The path may have been replaced between the check and the open: check what was opened.
    let meta = file.metadata().map_err(io(path))?;
    require(path, expected, &meta, FileType::is_file)?;
    Ok(file)
}

/// The whole of a text input (JSON), opened through `open_input_file`.
pub fn read_input_text(path: &Path, expected: &str) -> Result<String> {
    let mut text = String::new();
    open_input_file(path, expected)?
        .read_to_string(&mut text)
        .map_err(io(path))?;
    Ok(text)
}

/// Checks that `path` is a folder once symbolic links are followed.
pub fn check_input_dir(path: &Path, expected: &str) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| lookup_error(path, expected, e))?;
    require(path, expected, &meta, FileType::is_dir)
}

/// Whether anything stands at `path`. A symbolic link counts even when it dangles or loops,
/// so that opening it then says why it cannot be read, rather than the file being taken as
/// absent and another one looked for.
pub fn input_present(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(path)(e)),
    }
}

fn require(path: &Path, expected: &str, meta: &Metadata, ok: fn(&FileType) -> bool) -> Result<()> {
    if ok(&meta.file_type()) {
        return Ok(());
    }
    Err(ModelError::NotAFile {
        path: path.to_path_buf(),
        found: kind_name(meta.file_type()),
        expected: expected.to_string(),
    })
}

/// A failed lookup: a loop or a dangling link is named as such; anything else (a plain
/// missing file, no permission) keeps the OS's own words.
fn lookup_error(path: &Path, expected: &str, error: std::io::Error) -> ModelError {
    let found = if is_link_loop(&error) {
        "a symbolic link loop (following it never reaches a file)"
    } else if error.kind() == std::io::ErrorKind::NotFound && path.is_symlink() {
        "a symbolic link to a missing file"
    } else {
        return io(path)(error);
    };
    ModelError::NotAFile {
        path: path.to_path_buf(),
        found,
        expected: expected.to_string(),
    }
}

fn kind_name(t: FileType) -> &'static str {
    if t.is_dir() {
        return "a directory";
    }
    if t.is_file() {
        return "a regular file";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
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

// The standard library has no stable error kind for ELOOP yet, so the OS code is compared.
#[cfg(unix)]
fn is_link_loop(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

#[cfg(not(unix))]
fn is_link_loop(_: &std::io::Error) -> bool {
    false
}

/// Non-blocking, so that should the path become a FIFO between the check and the open, the
/// open returns at once (and the check after it refuses the FIFO) instead of waiting for a
/// writer; reads and maps of a regular file ignore the flag.
#[cfg(unix)]
fn open_for_reading(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_for_reading(path: &Path) -> std::io::Result<File> {
    File::open(path)
}
