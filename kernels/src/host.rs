//! The host's memory, as the system reports it: what every run that sizes itself by the
//! machine (the CPU reference's budget, the whole-model commands' checks) reads.

/// The memory the system reports available (Linux's MemAvailable: free memory plus what the
/// page cache can give back), in bytes; unknown off Linux.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// Keeps the display stack out of a headless run. Every Vulkan program loads Mesa's
/// device-select layer where Mesa is installed (an implicit layer); it connects to Wayland to
/// find the display's GPU, and without XDG_RUNTIME_DIR libwayland prints "error:
/// XDG_RUNTIME_DIR is invalid or not set in the environment." (twice) for nothing. prunebench
/// chooses its adapter itself, so where no Wayland display can be reached the layer is switched
/// off through its own documented variable, NODEVICE_SELECT=1, unless the user configured it
/// (MESA_VK_DEVICE_SELECT or NODEVICE_SELECT set).
///
/// Call it first thing in `main`, before any thread starts: the environment is process-wide.
pub fn quiet_display_probes() {
    let set = |k: &str| std::env::var_os(k).is_some();
    let no_wayland = !set("XDG_RUNTIME_DIR") && !set("WAYLAND_DISPLAY");
    if no_wayland && !set("MESA_VK_DEVICE_SELECT") && !set("NODEVICE_SELECT") {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}
