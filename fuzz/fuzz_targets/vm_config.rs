//! The VM configuration parser: any text as a vm.toml, then the checks `vireo run` applies.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = vireo_spec::VmSpec::from_toml(text, Path::new("/fuzz/vm.toml")) {
        let _ = spec.validate();
        let _ = spec.check_file_paths(&[]);
    }
});
