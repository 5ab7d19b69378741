//! Links the `piper` command as a position-dependent executable (Linux).
//!
//! Why: a PIE `piper` spent half of `piper --version` in the dynamic
//! loader applying ~21,000 relative relocations (and faulting in the pages
//! they touch) before `main`; non-PIE it has ~300, and a one-step
//! `piper exec` is ~0.3 ms faster, which is the difference to make that
//! issue 12 measures. What it gives up is ASLR of the executable's own
//! code, which buys `piper` little: its input, `piper.lua`, runs commands
//! by design. `piperd` takes requests from the network and stays PIE.
fn main() {
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" {
        println!("cargo:rustc-link-arg-bin=piper=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
