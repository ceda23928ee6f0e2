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

/// Every shader translates to the shading languages of the other native APIs, as wgpu's
/// Metal and DX12 backends translate them: MSL (Metal Shading Language 2.4, macOS 12 and
/// later), HLSL (Shader Model 6.2, what DX12 with DXC compiles) and SPIR-V 1.3 (Vulkan). This
/// checks the Metal and DX12 paths on a machine with neither GPU; it cannot catch a driver's
/// own compiler error, only what naga refuses to emit.
#[test]
fn every_shader_translates_to_msl_hlsl_and_spirv() {
    let failures: Vec<String> = prunebench_kernels::wgpu::shader_sources()
        .into_iter()
        .flat_map(|(name, src)| translation_failures(name, src))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The check above can fail: Metal has no f64, so a shader that uses it does not translate.
#[test]
fn a_shader_metal_cannot_run_fails_the_translation_check() {
    let src = "@group(0) @binding(0) var<storage, read_write> v: array<f64>;\n\
               @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) i: vec3<u32>) \
               { v[i.x] = v[i.x] * 2.0lf; }";
    let failures = translation_failures("f64", src);
    assert!(
        failures.iter().any(|f| f.starts_with("f64 -> MSL")),
        "{failures:?}"
    );
}

/// Each target validates the module with the capabilities its backend supports (as wgpu does
/// before translating: Metal has no f64, for one), then translates it.
fn translation_failures(name: &str, src: &str) -> Vec<String> {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
    assert!(!module.entry_points.is_empty(), "{name}: no entry point");
    let validate = |caps| {
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(&module)
            .map_err(|e| e.emit_to_string(src))
    };
    let mut failures = Vec::new();
    let mut check = |target: &str, result: Result<(), String>| {
        if let Err(e) = result {
            failures.push(format!("{name} -> {target}: {e}"));
        }
    };

    check(
        "MSL",
        validate(naga::back::msl::supported_capabilities()).and_then(|info| {
            let options = naga::back::msl::Options {
                lang_version: (2, 4),
                ..Default::default()
            };
            let pipeline = naga::back::msl::PipelineOptions::default();
            naga::back::msl::write_string(&module, &info, &options, &pipeline)
                .map(drop)
                .map_err(|e| e.to_string())
        }),
    );
    check(
        "HLSL",
        validate(naga::back::hlsl::supported_capabilities()).and_then(|info| {
            let options = naga::back::hlsl::Options {
                shader_model: naga::back::hlsl::ShaderModel::V6_2,
                ..Default::default()
            };
            let pipeline = naga::back::hlsl::PipelineOptions::default();
            let mut out = String::new();
            naga::back::hlsl::Writer::new(&mut out, &options, &pipeline)
                .write(&module, &info, None)
                .map(drop)
                .map_err(|e| e.to_string())
        }),
    );
    check(
        "SPIR-V",
        validate(naga::back::spv::supported_capabilities()).and_then(|info| {
            let options = naga::back::spv::Options {
                lang_version: (1, 3),
                ..Default::default()
            };
            let words = naga::back::spv::write_vec(&module, &info, &options, None)
                .map_err(|e| e.to_string())?;
            if words.first() == Some(&0x0723_0203) {
                Ok(())
            } else {
                Err("no SPIR-V magic number".into())
            }
        }),
    );
    failures
}
