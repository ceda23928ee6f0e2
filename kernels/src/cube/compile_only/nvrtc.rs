//! NVRTC, as CubeCL's CUDA runtime calls it (the same architecture flag, include paths and
//! `-lineinfo`), with `--ptxas-options=-v` so that the program log carries ptxas's resource
//! report, which is parsed here. Loaded at run time through cudarc; no driver is needed.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use super::target::Target;

/// Where NVRTC and the CUDA headers are, and NVRTC's version.
#[derive(Clone, Debug)]
pub struct Nvrtc {
    pub cuda_path: PathBuf,
    pub version: (i32, i32),
    include: Vec<String>,
}

/// Why NVRTC cannot be used: one line, saying how to get it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NvrtcMissing(pub String);

const HOW: &str = "install it with scripts/cuda-toolkit.sh DIR and pass --cuda-path (or set \
                   CUDA_PATH and LD_LIBRARY_PATH as the script prints)";

impl Nvrtc {
    /// NVRTC and the headers of the toolkit at `cuda_path`, else at `CUDA_PATH` or the
    /// standard places CubeCL looks (/usr/local/cuda, /opt/cuda, /usr).
    pub fn load(cuda_path: Option<&Path>) -> Result<Self, NvrtcMissing> {
        let root = match cuda_path {
            Some(p) => p.to_path_buf(),
            None => cubecl::cuda::install::cuda_path().ok_or_else(|| {
                NvrtcMissing(format!("no CUDA toolkit found (CUDA_PATH unset); {HOW}"))
            })?,
        };
        let include = root.join("include");
        if !include.join("cuda_runtime.h").is_file() {
            return Err(NvrtcMissing(format!(
                "no CUDA headers at {} (include/cuda_runtime.h); {HOW}",
                root.display()
            )));
        }
        if !include.join("crt").join("mma.h").is_file() {
            return Err(NvrtcMissing(format!(
                "{} lacks include/crt/mma.h (the nvidia-cuda-crt wheel); {HOW}",
                root.display()
            )));
        }
        preload(&root);
        // SAFETY: only tries to dlopen NVRTC by the names cudarc would use.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(NvrtcMissing(format!(
                "NVRTC (libnvrtc) could not be loaded from {}/lib or the library path; {HOW}",
                root.display()
            )));
        }
        let (mut major, mut minor) = (0, 0);
        // SAFETY: NVRTC is loaded (checked above); the call writes two ints.
        unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
        let mut include_opts = vec![format!("--include-path={}", include.display())];
        let cccl = include.join("cccl");
        if cccl.is_dir() {
            include_opts.push(format!("--include-path={}", cccl.display()));
        }
        Ok(Self {
            cuda_path: root,
            version: (major, minor),
            include: include_opts,
        })
    }

    /// Compiles `source` for `target`: the PTX's ptxas resources, or NVRTC's log.
    pub fn compile(&self, source: &str, target: &Target) -> Result<Resources, String> {
        let arch = format!("--gpu-architecture={}", target.name);
        let mut options: Vec<String> = vec![arch];
        options.extend(self.include.iter().cloned());
        options.push("-lineinfo".into());
        options.push("--ptxas-options=-v".into());
        let src = CString::new(source).map_err(|_| "the source holds a NUL byte".to_string())?;
        let program = cudarc::nvrtc::result::create_program(src.as_c_str(), None)
            .map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
        // SAFETY: `program` was just created; options are plain strings; the program is
        // destroyed once on every path below.
        unsafe {
            let compiled = cudarc::nvrtc::result::compile_program(program, &options);
            let log = cudarc::nvrtc::result::get_program_log(program)
                .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = cudarc::nvrtc::result::destroy_program(program);
            match compiled {
                Ok(()) => parse_ptxas(&log)
                    .ok_or_else(|| format!("no ptxas resource report in the NVRTC log:\n{log}")),
                Err(e) => Err(format!("{e:?}\n{}", log.trim_end())),
            }
        }
    }
}

/// Makes `root/lib/libnvrtc.so.*` the NVRTC cudarc finds: a library already loaded answers
/// to its soname, so no LD_LIBRARY_PATH is needed (NVRTC finds its builtins through its
/// `$ORIGIN` rpath).
fn preload(root: &Path) {
    let Ok(dir) =
        std::fs::read_dir(root.join("lib")).or_else(|_| std::fs::read_dir(root.join("lib64")))
    else {
        return;
    };
    let mut libs: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc.so"))
        })
        .collect();
    libs.sort();
    for lib in libs {
        let Ok(c) = CString::new(lib.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: dlopen of a shared library by path; the handle is kept for the process.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !handle.is_null() {
            return;
        }
    }
}

/// ptxas's report for one entry function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub registers: u32,
    /// Static shared memory, bytes.
    pub shared: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub stack: u32,
}

/// Parses the lines ptxas -v writes, e.g.
/// `ptxas info    : Used 14 registers, used 0 barriers, 380 bytes cmem[0]` (`, 1024 bytes
/// smem` when there is static shared memory) and
/// `    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads`.
pub fn parse_ptxas(log: &str) -> Option<Resources> {
    let mut r = Resources::default();
    let mut seen = false;
    for line in log.lines() {
        let line = line.trim();
        let fields = line.trim_start_matches("ptxas info    :").split(',');
        if line.contains("Used") && line.contains("registers") {
            seen = true;
            for f in fields {
                let words: Vec<&str> = f.split_whitespace().collect();
                match words.as_slice() {
                    ["Used", n, "registers"] => r.registers = n.parse().ok()?,
                    [n, "bytes", "smem"] => r.shared = n.parse().ok()?,
                    _ => {}
                }
            }
        } else if line.contains("bytes stack frame") {
            for f in fields {
                let words: Vec<&str> = f.split_whitespace().collect();
                match words.as_slice() {
                    [n, "bytes", "stack", "frame"] => r.stack = n.parse().ok()?,
                    [n, "bytes", "spill", "stores"] => r.spill_stores = n.parse().ok()?,
                    [n, "bytes", "spill", "loads"] => r.spill_loads = n.parse().ok()?,
                    _ => {}
                }
            }
        }
    }
    seen.then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ptxas_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
                   ptxas info    : Compiling entry function 'k' for 'sm_90a'\n\
                   ptxas info    : Function properties for k\n\
                   \x20   8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n\
                   ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem, 380 bytes cmem[0]\n";
        let r = parse_ptxas(log).unwrap();
        assert_eq!(
            r,
            Resources {
                registers: 40,
                shared: 2048,
                spill_stores: 12,
                spill_loads: 16,
                stack: 8
            }
        );
        assert_eq!(parse_ptxas("warning: nothing"), None);
    }
}
