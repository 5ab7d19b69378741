//! Links the `piper` command for a fast start (Linux): every `piper exec`
//! of a cached build is mostly process start, so it counts (issue 12
//! measures a one-step build against make).
//!
//! 1. Position-dependent (`-no-pie`): a PIE `piper` spent half of
//!    `piper --version` in the dynamic loader applying ~21,000 relative
//!    relocations (and faulting in the pages they touch) before `main`;
//!    non-PIE it has ~300, and a one-step `piper exec` is ~0.3 ms faster.
//!    What it gives up is ASLR of the executable's own code, which buys
//!    `piper` little: its input, `piper.lua`, runs commands by design.
//! 2. The unwinder linked in (libgcc_eh) instead of loading libgcc_s.so:
//!    that library's constructor probes the CPU with `cpuid`, which traps
//!    to the hypervisor on a VM; with the load itself it cost ~0.1 ms of
//!    every run. rustc asks for `-lgcc_s` by name, so a directory whose
//!    `libgcc_s.a` is the static unwinder goes first on the search path.
//!    Where the compiler has no libgcc_eh.a, `piper` links as before.
//! 3. The functions a run executes placed together (lld's
//!    `--symbol-ordering-file`, from `link/piper.symbol-order`, which
//!    `link/update-symbol-order` regenerates): spread over 7 MB of .text,
//!    they were faulted in a page cluster at a time. One `true` step: 220 ->
//!    200 page faults, 2.45 -> 2.2 ms. Only where rustc links with its own
//!    lld (the default on x86_64 Linux since Rust 1.90) and nothing in the
//!    configuration chose another linker: GNU ld has no such option.
//!
//! glibc itself stays shared: linked in statically, std cannot find
//! `posix_spawn_file_actions_addchdir_np` (it asks `dlsym`) and spawns every
//! step with `fork` (a 1000-step build was 1.6x slower; docs/architecture.md).
//!
//! `piperd` takes requests from the network and stays PIE; it starts once.
//!
//! It also digests the embedded Lua stdlib (`PIPER_STDLIB_DIGEST`): the
//! configuration cache's key must change with it, and hashing ~100 KB of
//! sources at every start cost a one-step build a tenth of its
//! instructions.
use std::hash::Hasher;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=stdlib");
    println!(
        "cargo:rustc-env=PIPER_STDLIB_DIGEST={:016x}",
        stdlib_digest()
    );
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
        || std::env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("gnu")
    {
        return;
    }
    println!("cargo:rustc-link-arg-bin=piper=-no-pie");
    let order =
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("link/piper.symbol-order");
    println!("cargo:rerun-if-changed={}", order.display());
    if order.exists() && links_with_rust_lld() {
        println!(
            "cargo:rustc-link-arg-bin=piper=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // A name the code no longer has is expected after any change.
        println!("cargo:rustc-link-arg-bin=piper=-Wl,--no-warn-symbol-ordering");
    }
    if let Some(dir) = static_unwinder_dir() {
        println!("cargo:rustc-link-arg-bin=piper=-L{}", dir.display());
    }
}

/// Whether rustc links this target with the lld it ships: x86_64 Linux,
/// Rust 1.90 or later, and no linker chosen in the environment, the
/// configuration (`RUSTC_LINKER`) or the flags.
fn links_with_rust_lld() -> bool {
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || std::env::var_os("RUSTC_LINKER").is_some()
    {
        return false;
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if ["linker", "link-self-contained", "fuse-ld"]
        .iter()
        .any(|chosen| flags.contains(chosen))
    {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = std::process::Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let mut numbers = version
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split('.')
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}

/// A directory holding `libgcc_s.a` -> the compiler's `libgcc_eh.a`.
fn static_unwinder_dir() -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = std::process::Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let eh = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // Not found, the compiler prints the bare name back.
    if !eh.is_absolute() || !eh.exists() {
        return None;
    }
    let dir = PathBuf::from(std::env::var("OUT_DIR").ok()?).join("static-unwinder");
    // Made afresh: anything else left in it would be linked in too.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    let link = dir.join("libgcc_s.a");
    std::os::unix::fs::symlink(&eh, &link).ok()?;
    Some(dir)
}

/// A digest of every file under `stdlib/` (path and content, in path
/// order). SipHash with fixed keys: it only tells one build's stdlib from
/// another's, nothing adversarial.
fn stdlib_digest() -> u64 {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("stdlib/ is readable") {
            let path = entry.expect("stdlib/ is readable").path();
            if path.is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(Path::new("stdlib"), &mut files);
    files.sort();
    #[allow(deprecated)] // SipHasher: stable output for fixed keys, which is all this needs.
    let mut hasher = std::hash::SipHasher::new();
    for file in files {
        hasher.write(file.to_string_lossy().as_bytes());
        hasher.write(&std::fs::read(&file).expect("stdlib file is readable"));
    }
    hasher.finish()
}
