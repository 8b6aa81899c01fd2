//! Any text as a kubeconfig, resolved as the CLI resolves one.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A directory with nothing in it: paths in the input resolve to
    // nothing that exists.
    let file = std::path::PathBuf::from("/nonexistent-skiff-fuzz/config");
    let _ = skiff_client::kubeconfig::resolve(&[(file, text.to_string())], None);
});
