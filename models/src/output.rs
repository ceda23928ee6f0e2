//! The one path every output of prunebench is written through, files and folders alike.
//!
//! A target is checked before any work starts (`check_file`, `check_folder`): its folder exists
//! and is writable, it is not a folder (or, for a folder target, not a file), not a device, FIFO
//! or socket, and it is none of the run's inputs, however it is spelled (symlinks, `..`, hard
//! links). The data then goes to a temporary beside the target (`PartialFile`, `PartialDir`)
//! that is renamed over it only when complete. The temporary is removed on every other exit:
//! by `Drop` on errors and panics, and by `remove_temporaries_and_exit`, which the program's
//! signal handler calls, since a signal would otherwise end the process with it still there.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::{ModelError, Result};

/// Test hook: when set to a number of milliseconds, every `PartialFile` waits that long, complete
/// and still under its temporary name, before it is renamed, so that a test can deliver a signal
/// while a temporary exists. Unset in normal use.
pub const HOLD_ENV: &str = "PRUNEBENCH_TEST_HOLD_PARTIAL_MS";

/// Test hook: when set to a number of milliseconds, a `PartialDir` complete under its temporary
/// name waits that long before `commit_new` moves it into place, so that a test can run two
/// writers of one folder at once. Unset in normal use.
pub const HOLD_DIR_ENV: &str = "PRUNEBENCH_TEST_HOLD_PARTIAL_DIR_MS";

/// The longest file name most file systems accept (NAME_MAX), in bytes.
const NAME_MAX: usize = 255;

fn refuse(path: &Path, detail: impl Into<String>) -> ModelError {
    ModelError::Write {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |e| refuse(path, e.to_string())
}

/// A file's identity (device and inode), so that a hard link to an input is recognised.
#[cfg(unix)]
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn identity(_path: &Path) -> Option<(u64, u64)> {
    None
}

struct Input {
    path: PathBuf,
    id: Option<(u64, u64)>,
    what: String,
}

/// The inputs of a run, which no output may replace: files, and folders nothing inside of
/// which may be written (a checkpoint).
#[derive(Default)]
pub struct Inputs {
    files: Vec<Input>,
    folders: Vec<Input>,
}

impl Inputs {
    pub fn new() -> Self {
        Self::default()
    }

    /// An input file, named `what` in errors (e.g. "the --calibration file").
    pub fn file(&mut self, path: &Path, what: &str) {
        self.files.push(Input {
            path: fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            id: identity(path),
            what: what.into(),
        });
    }

    /// An input folder: neither it nor anything in it may be written, nor the files its
    /// entries link to (a Hugging Face cache links each shard to a blob elsewhere).
    pub fn folder(&mut self, dir: &Path, what: &str) {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                self.file(&e.path(), what);
            }
        }
        self.folders.push(Input {
            path: fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
            id: None,
            what: what.into(),
        });
    }

    /// What input `target` would replace, if any.
    fn replaced_by(&self, target: &Path) -> Option<&str> {
        let spellings = resolved(target);
        let id = identity(target);
        let file = self
            .files
            .iter()
            .find(|i| spellings.contains(&i.path) || (id.is_some() && i.id == id));
        let inside = || {
            self.folders
                .iter()
                .find(|d| spellings.iter().any(|s| s.starts_with(&d.path)))
        };
        file.or_else(inside).map(|i| i.what.as_str())
    }
}

/// The paths `target` stands for: its folder resolved with the name appended (the file the
/// rename would create) and, if it exists, the file it resolves to through symlinks.
fn resolved(target: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let (Ok(dir), Some(name)) = (fs::canonicalize(parent(target)), target.file_name()) {
        out.push(dir.join(name));
    }
    if let Ok(p) = fs::canonicalize(target) {
        out.push(p);
    }
    out
}

/// The folder `path` is in ("." for a bare name).
fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Fails unless `target` can be replaced by a file: its folder exists, and it is absent or a
/// regular file (a rename over a device node or a FIFO would replace the node itself).
fn check_file_kind(target: &Path) -> Result<()> {
    if target.is_dir() {
        return Err(refuse(target, "it is a folder"));
    }
    if target.file_name().is_none() {
        return Err(refuse(target, "not a file path"));
    }
    let dir = parent(target);
    if !dir.is_dir() {
        let why = if dir.exists() {
            format!("{} is not a folder", dir.display())
        } else {
            format!("folder {} does not exist", dir.display())
        };
        return Err(refuse(target, why));
    }
    // Follows a symlink: what matters is what the name leads to. A dangling one is replaced.
    match fs::metadata(target) {
        Ok(m) if !m.is_file() => Err(refuse(
            target,
            "not a regular file (a device, FIFO or socket); refusing to replace it",
        )),
        _ => Ok(()),
    }
}

fn check_not_input(target: &Path, inputs: &Inputs) -> Result<()> {
    match inputs.replaced_by(target) {
        Some(what) => Err(refuse(
            target,
            format!("it is, or lies in, {what}; refusing to overwrite an input"),
        )),
        None => Ok(()),
    }
}

/// Checks, before any work, that a file can be written at `target`: the kind checks above,
/// not one of `inputs`, and its folder writable (a temporary is created there and removed).
pub fn check_file(target: &Path, inputs: &Inputs) -> Result<()> {
    check_file_kind(target)?;
    check_not_input(target, inputs)?;
    PartialFile::create(target).map(drop)
}

/// Checks, before any work, that a folder of outputs can be written at `target`: it is absent
/// or a folder, not an input folder, and both it and the folder it is in are writable.
pub fn check_folder(target: &Path, inputs: &Inputs) -> Result<()> {
    if target.exists() && !target.is_dir() {
        return Err(refuse(target, "it exists and is not a folder"));
    }
    if inputs
        .folders
        .iter()
        .any(|d| resolved(target).contains(&d.path))
    {
        return Err(refuse(target, "it is an input folder"));
    }
    let dir = PartialDir::create(target)?;
    if target.is_dir() {
        // Files are moved into an existing folder one by one: it must be writable too.
        PartialFile::create(&target.join("probe")).map(drop)?;
    }
    drop(dir);
    Ok(())
}

/// Checks, before any work, that a new folder of outputs can be made at `target`: what
/// `check_folder` checks, and that it is neither an input folder nor inside one, and absent
/// or empty (files left there, another model's shards say, would mix with the new ones).
pub fn check_new_folder(target: &Path, inputs: &Inputs) -> Result<()> {
    if let Some(what) = inputs.replaced_by(target) {
        return Err(refuse(
            target,
            format!("it is, or lies in, {what}; refusing to write into an input"),
        ));
    }
    if target.is_dir() {
        let mut entries = fs::read_dir(target).map_err(io_err(target))?;
        if entries.next().is_some() {
            return Err(refuse(
                target,
                "the folder exists and is not empty; give a new or an empty folder",
            ));
        }
    }
    check_folder(target, inputs)
}

/// What the signal handler removes: every temporary that exists now.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Distinguishes temporaries of one process.
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn live() -> MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn remove_any(p: &Path) {
    if p.is_dir() {
        let _ = fs::remove_dir_all(p);
    } else {
        let _ = fs::remove_file(p);
    }
}

/// Removes every live temporary and exits with `code`, for a signal handler. The registry stays
/// locked until the process is gone, so no writer can create or rename a temporary meanwhile.
pub fn remove_temporaries_and_exit(code: i32) -> ! {
    let mut live = live();
    for p in live.drain(..) {
        remove_any(&p);
    }
    std::process::exit(code)
}

/// `.NAME.partial-PID-N` beside `target`, with NAME shortened so the whole stays within
/// NAME_MAX: a legal long target name must not make its temporary illegal.
fn temp_path(target: &Path) -> Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| refuse(target, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    let suffix = format!(
        ".partial-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let budget = NAME_MAX - 1 - suffix.len();
    let mut end = name.len().min(budget);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut file = OsString::from(".");
    file.push(&name[..end]);
    file.push(suffix);
    Ok(parent(target).join(file))
}

/// Registers `tmp` and creates it while holding the registry, so the signal handler either
/// sees it or runs before it exists (and then the process ends before it is created).
fn create_registered<T>(
    tmp: &Path,
    create: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let mut live = live();
    let made = create(tmp)?;
    live.push(tmp.to_path_buf());
    Ok(made)
}

fn unregister(tmp: &Path) {
    live().retain(|p| p != tmp);
}

/// A file being written under a temporary name beside its target; `commit` renames it over the
/// target, dropping it without `commit` removes it.
pub struct PartialFile {
    target: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
}

impl PartialFile {
    pub fn create(target: &Path) -> Result<PartialFile> {
        check_file_kind(target)?;
        let tmp = temp_path(target)?;
        let file = create_registered(&tmp, |t| {
            OpenOptions::new().write(true).create_new(true).open(t)
        })
        .map_err(|e| {
            refuse(
                target,
                format!("folder {} is not writable: {e}", parent(target).display()),
            )
        })?;
        Ok(PartialFile {
            target: target.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// The target this file will replace.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes and syncs the data, checks the target once more (something may have appeared
    /// there since the start), and renames the temporary over it.
    pub fn commit(mut self) -> Result<()> {
        let out = self.out.take().expect("a PartialFile is committed once");
        let file = out
            .into_inner()
            .map_err(|e| io_err(&self.target)(e.into_error()))?;
        file.sync_all().map_err(io_err(&self.target))?;
        drop(file);
        hold(HOLD_ENV);
        check_file_kind(&self.target)?;
        let mut live = live();
        fs::rename(&self.tmp, &self.target).map_err(io_err(&self.target))?;
        live.retain(|p| p != &self.tmp);
        // Renamed: nothing is left for `Drop` to remove.
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Write for PartialFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.as_mut().expect("not committed").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.as_mut().expect("not committed").flush()
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            drop(self.out.take());
            let _ = fs::remove_file(&self.tmp);
            unregister(&self.tmp);
        }
    }
}

fn hold(var: &str) {
    if let Some(ms) = std::env::var(var).ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Writes `bytes` to `path` through a `PartialFile`.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = PartialFile::create(path)?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.commit()
}

/// A folder of outputs being written under a temporary name beside its target; `commit` moves
/// it into place, dropping it without `commit` removes it and everything in it.
pub struct PartialDir {
    target: PathBuf,
    tmp: PathBuf,
}

impl PartialDir {
    pub fn create(target: &Path) -> Result<PartialDir> {
        // "." or "reports/" have no usable name until resolved.
        let target = fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
        if target.file_name().is_none() {
            return Err(refuse(&target, "not a folder path"));
        }
        let dir = parent(&target);
        if !dir.is_dir() {
            return Err(refuse(
                &target,
                format!("folder {} does not exist", dir.display()),
            ));
        }
        let tmp = temp_path(&target)?;
        create_registered(&tmp, |t| fs::create_dir(t)).map_err(|e| {
            refuse(
                &target,
                format!("folder {} is not writable: {e}", dir.display()),
            )
        })?;
        Ok(PartialDir { target, tmp })
    }

    /// Where to write the files.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Puts the files in place: a new target is the renamed temporary; into an existing one
    /// (which may hold other files) each file is renamed, after every one was checked, so a
    /// refusal moves nothing.
    pub fn commit(mut self, inputs: &Inputs) -> Result<()> {
        if !self.target.exists() {
            return self.rename_whole().map_err(io_err(&self.target));
        }
        let names = fs::read_dir(&self.tmp)
            .and_then(|d| {
                d.map(|e| e.map(|e| e.file_name()))
                    .collect::<std::io::Result<Vec<_>>>()
            })
            .map_err(io_err(&self.target))?;
        for n in &names {
            let to = self.target.join(n);
            check_file_kind(&to)?;
            check_not_input(&to, inputs)?;
        }
        for n in &names {
            let to = self.target.join(n);
            fs::rename(self.tmp.join(n), &to).map_err(io_err(&to))?;
        }
        Ok(())
    }
}

impl PartialDir {
    /// Puts a new folder in place in one step, or nothing at all: the temporary is renamed to
    /// the target, which must be absent or an empty folder at that moment. A rename never
    /// replaces a folder that holds anything, so when another run filled the target since the
    /// start, this one is refused whole and its files are removed, instead of being mixed in.
    pub fn commit_new(mut self, inputs: &Inputs) -> Result<()> {
        hold(HOLD_DIR_ENV);
        check_not_input(&self.target, inputs)?;
        if self.target.exists() && !self.target.is_dir() {
            return Err(refuse(&self.target, "it exists and is not a folder"));
        }
        match self.rename_whole() {
            Ok(()) => Ok(()),
            Err(e) if self.target.is_dir() => Err(refuse(
                &self.target,
                format!(
                    "the folder is no longer empty (another run wrote there since this one \
                     started); nothing of this run was put there ({e})"
                ),
            )),
            Err(e) => Err(refuse(&self.target, e.to_string())),
        }
    }

    /// Renames the whole temporary to the target, holding the registry so the signal handler
    /// never removes a folder that is already in place; afterwards nothing is left to `Drop`.
    fn rename_whole(&mut self) -> std::io::Result<()> {
        let mut live = live();
        fs::rename(&self.tmp, &self.target)?;
        live.retain(|p| p != &self.tmp);
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.tmp);
            unregister(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_long_legal_name_gets_a_legal_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("{}.safetensors", "é".repeat(113));
        assert!(name.len() > 230 && name.len() <= NAME_MAX);
        let tmp = temp_path(&dir.path().join(&name)).unwrap();
        assert!(tmp.file_name().unwrap().len() <= NAME_MAX);
        write_file(&dir.path().join(&name), b"x").unwrap();
        assert_eq!(entries(dir.path()), vec![name]);
    }

    #[test]
    fn an_uncommitted_file_or_folder_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = PartialFile::create(&dir.path().join("a.bin")).unwrap();
        f.write_all(b"data").unwrap();
        drop(f);
        let d = PartialDir::create(&dir.path().join("report")).unwrap();
        fs::write(d.path().join("chart.svg"), "<svg/>").unwrap();
        drop(d);
        assert!(entries(dir.path()).is_empty());
        // Other tests in this process register their own temporaries meanwhile: only this
        // test's must be gone from the registry.
        assert!(!live().iter().any(|p| p.starts_with(dir.path())));
    }

    #[test]
    fn a_folder_commit_refused_for_one_file_moves_none() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("report");
        fs::create_dir_all(target.join("b.html")).unwrap();
        let d = PartialDir::create(&target).unwrap();
        fs::write(d.path().join("a.svg"), "<svg/>").unwrap();
        fs::write(d.path().join("b.html"), "<p/>").unwrap();
        let err = d.commit(&Inputs::new()).unwrap_err().to_string();
        assert!(err.contains("it is a folder"), "{err}");
        assert_eq!(entries(dir.path()), vec!["report"]);
        assert_eq!(entries(&target), vec!["b.html"]);
    }

    #[test]
    fn a_new_folder_is_put_in_place_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model");
        // Absent, then empty: both take the whole folder.
        for make_empty in [false, true] {
            if make_empty {
                fs::remove_dir_all(&target).unwrap();
                fs::create_dir(&target).unwrap();
            }
            let d = PartialDir::create(&target).unwrap();
            fs::write(d.path().join("config.json"), "{}").unwrap();
            d.commit_new(&Inputs::new()).unwrap();
            assert_eq!(entries(&target), vec!["config.json"]);
        }
        // Filled by another writer since the start: refused, the other's files untouched,
        // this one's temporary gone.
        let d = PartialDir::create(&target).unwrap();
        fs::write(d.path().join("tokenizer.json"), "{}").unwrap();
        let err = d.commit_new(&Inputs::new()).unwrap_err().to_string();
        assert!(err.contains("no longer empty"), "{err}");
        assert_eq!(entries(&target), vec!["config.json"]);
        assert_eq!(entries(dir.path()), vec!["model"]);
    }

    #[test]
    fn inputs_are_recognised_however_spelled() {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("ck");
        fs::create_dir(&ck).unwrap();
        fs::write(ck.join("model.safetensors"), "x").unwrap();
        let cal = dir.path().join("cal.safetensors");
        fs::write(&cal, "x").unwrap();
        let mut inputs = Inputs::new();
        inputs.folder(&ck, "the checkpoint folder");
        inputs.file(&cal, "the --calibration file");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&cal, dir.path().join("link")).unwrap();
            fs::hard_link(&cal, dir.path().join("hard")).unwrap();
        }
        for bad in [
            ck.join("model.safetensors"),
            ck.join("new.safetensors"),
            ck.join("../ck/model.safetensors"),
            cal.clone(),
            dir.path().join("link"),
            dir.path().join("hard"),
        ] {
            let err = check_file(&bad, &inputs).unwrap_err().to_string();
            assert!(err.contains("refusing to overwrite an input"), "{err}");
        }
        check_file(&dir.path().join("out.safetensors"), &inputs).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn devices_fifos_and_folders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let missing = dir.path().join("no/x.bin");
        for (t, why) in [
            (Path::new("/dev/null"), "not a regular file"),
            (fifo.as_path(), "not a regular file"),
            (dir.path(), "it is a folder"),
            (missing.as_path(), "does not exist"),
        ] {
            let err = check_file(t, &Inputs::new()).unwrap_err().to_string();
            assert!(err.contains(why), "{}: {err}", t.display());
        }
        use std::os::unix::fs::FileTypeExt;
        assert!(fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
        assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }
}
