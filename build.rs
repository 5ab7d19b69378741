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
//! 3. glibc linked in (`-static`): a dynamically linked `piper` spent
//!    ~0.25 ms of every start in the loader, mapping libc and libm,
//!    applying their relocations and binding ~230 symbols (interleaved
//!    hyperfine, one `true` step: 2.18 -> 1.92 ms; make 2.29). The
//!    directory that maps `-lgcc_s` also maps each library rustc asks for
//!    (`-lc`, `-lm`, ...) to the compiler's static archive, so the link
//!    finds those before the shared ones. What a static glibc gives up:
//!    NSS modules other than files and dns (`getaddrinfo` of the remote
//!    client is the only lookup `piper` does) and `dlopen` (Piper's Lua
//!    loads no C modules). `PIPER_LINK_LIBC=dynamic` at build time links
//!    glibc dynamically, as does a system without `libc.a`.
//!
//! `piperd` takes requests from the network and stays PIE and dynamically
//! linked (its database hosts resolve through the system's NSS); it starts
//! once.
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
    println!("cargo:rerun-if-env-changed=PIPER_LINK_LIBC");
    println!("cargo:rustc-link-arg-bin=piper=-no-pie");
    let static_libc = std::env::var("PIPER_LINK_LIBC").as_deref() != Ok("dynamic");
    if let Some((dir, libc_linked_in)) = static_libs_dir(static_libc) {
        println!("cargo:rustc-link-arg-bin=piper=-L{}", dir.display());
        if libc_linked_in {
            println!("cargo:rustc-link-arg-bin=piper=-static");
            // What rustc itself appends for `crt-static`: libc and the
            // compiler's runtime need each other, and a linker that reads
            // archives in order (GNU ld) needs them after the rest.
            for lib in ["-lc", "-lgcc_eh", "-lgcc", "-lc"] {
                println!("cargo:rustc-link-arg-bin=piper={lib}");
            }
        }
    }
}

/// Libraries rustc links std against, by the names it asks for them.
const GLIBC_LIBS: [&str; 6] = ["c", "m", "pthread", "rt", "dl", "util"];

/// A directory of static archives under the names rustc links by:
/// `libgcc_s.a` -> the compiler's `libgcc_eh.a`, and with `libc`, each of
/// [`GLIBC_LIBS`] -> its `.a`. Returns whether glibc's archives are there
/// (all of them, or none is linked in).
fn static_libs_dir(libc: bool) -> Option<(PathBuf, bool)> {
    let dir = PathBuf::from(std::env::var("OUT_DIR").ok()?).join("static-libs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    let link = |archive: &Path, name: &str| std::os::unix::fs::symlink(archive, dir.join(name));
    link(&compiler_file("libgcc_eh.a")?, "libgcc_s.a").ok()?;
    let archives: Option<Vec<PathBuf>> = GLIBC_LIBS
        .iter()
        .map(|lib| compiler_file(&format!("lib{lib}.a")))
        .collect();
    let libc_linked_in = match archives {
        Some(archives) if libc => GLIBC_LIBS
            .iter()
            .zip(&archives)
            .all(|(lib, archive)| link(archive, &format!("lib{lib}.a")).is_ok()),
        _ => false,
    };
    Some((dir, libc_linked_in))
}

/// Where the C compiler finds `name`, if it does.
fn compiler_file(name: &str) -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = std::process::Command::new(cc)
        .arg(format!("-print-file-name={name}"))
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // Not found, the compiler prints the bare name back.
    (path.is_absolute() && path.exists()).then_some(path)
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
