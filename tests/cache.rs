//! Issue 30, the local disk cache: step results shared between checkouts
//! of a project on one machine (`piper exec --disk-cache DIR`), with real
//! processes, real files and two checkouts in temp dirs.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::harness::{PIPER, unindent};

/// A project whose `build` step concatenates its sources (and says so),
/// and whose `count` step, with `cache = false`, reads them again.
fn project(dir: &Path) {
    let config = unindent(
        r#"
        local build = step "build" {
          inputs = "src/*.txt", outputs = "out/all.txt",
          run = "mkdir -p out && cat src/*.txt > out/all.txt && echo built it",
        }
        step "count" {
          deps = { build }, inputs = "out/all.txt", outputs = "out/count.txt",
          cache = false,
          run = "wc -l < out/all.txt > out/count.txt",
        }
        pipeline "ci" { "count" }
        "#,
    );
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("piper.lua"), config).unwrap();
    std::fs::write(dir.join("src/a.txt"), "hello\n").unwrap();
    std::fs::write(dir.join("src/b.txt"), "world\n").unwrap();
}

fn exec(dir: &Path, cache: &Path) -> Output {
    exec_with(dir, cache, &[])
}

/// `piper exec ci --json --disk-cache CACHE` and `extra` flags, in `dir`;
/// it must succeed.
pub(crate) fn exec_with(dir: &Path, cache: &Path, extra: &[&str]) -> Output {
    let out = std::process::Command::new(PIPER)
        .args(["exec", "ci", "--json", "--disk-cache"])
        .arg(cache)
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Each step's final status, and the output the events carried for it.
pub(crate) fn steps(out: &Output) -> Vec<(String, String, String)> {
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut steps = Vec::new();
    for e in events.iter().filter(|e| e["event"] == "step_finished") {
        let name = e["step"].as_str().unwrap().to_string();
        let printed: String = (events.iter())
            .filter(|o| o["event"] == "step_output" && o["step"] == name.as_str())
            .map(|o| o["data"].as_str().unwrap().to_string())
            .collect();
        let status = e["status"].as_str().unwrap().to_string();
        steps.push((name, status, printed));
    }
    steps
}

pub(crate) fn status_of<'a>(
    steps: &'a [(String, String, String)],
    name: &str,
) -> &'a (String, String, String) {
    steps.iter().find(|s| s.0 == name).unwrap()
}

#[test]
fn a_second_checkout_fetches_what_the_first_built() {
    let cache = tempfile::tempdir().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    project(a.path());
    project(b.path());

    let first = steps(&exec(a.path(), cache.path()));
    assert_eq!(status_of(&first, "build").1, "success", "{first:?}");

    // Another checkout, nothing built: `build` is fetched (its output
    // file, and what it printed), `count` (cache = false) runs.
    // Before it runs, explain says so.
    let explained = std::process::Command::new(PIPER)
        .args(["explain", "ci", "--disk-cache"])
        .arg(cache.path())
        .current_dir(b.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&explained.stdout);
    assert!(said.contains("it would be fetched from cache"), "{said}");

    let second = exec(b.path(), cache.path());
    let seen = steps(&second);
    let build = status_of(&seen, "build");
    assert_eq!(build.1, "fetched", "{seen:?}");
    assert!(
        build.2.contains("built it"),
        "the log is replayed: {seen:?}"
    );
    assert_eq!(status_of(&seen, "count").1, "success", "{seen:?}");
    assert_eq!(
        std::fs::read_to_string(b.path().join("out/all.txt")).unwrap(),
        "hello\nworld\n"
    );
    let finished = String::from_utf8_lossy(&second.stdout);
    assert!(finished.contains("fetched from cache"), "{finished}");

    // Fetched is as good as built: the next run finds it up to date.
    let third = steps(&exec(b.path(), cache.path()));
    assert_eq!(status_of(&third, "build").1, "up_to_date", "{third:?}");

    // Other sources are other work: it runs, and is stored for the next.
    std::fs::write(b.path().join("src/b.txt"), "there\n").unwrap();
    let changed = steps(&exec(b.path(), cache.path()));
    assert_eq!(status_of(&changed, "build").1, "success", "{changed:?}");
    std::fs::write(a.path().join("src/b.txt"), "there\n").unwrap();
    let again = steps(&exec(a.path(), cache.path()));
    assert_eq!(status_of(&again, "build").1, "fetched", "{again:?}");
    assert_eq!(
        std::fs::read_to_string(a.path().join("out/all.txt")).unwrap(),
        "hello\nthere\n"
    );
}

/// A blob that does not match its digest is a miss, said in a warning:
/// the step runs, and nothing damaged is written into the tree.
#[test]
fn a_damaged_cache_is_a_warning_and_the_step_runs() {
    let cache = tempfile::tempdir().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    project(a.path());
    project(b.path());
    exec(a.path(), cache.path());
    let mut blobs = Vec::new();
    for shard in std::fs::read_dir(cache.path().join("cas"))
        .unwrap()
        .flatten()
    {
        blobs.extend(
            std::fs::read_dir(shard.path())
                .unwrap()
                .flatten()
                .map(|e| e.path()),
        );
    }
    assert!(!blobs.is_empty());
    for blob in &blobs {
        std::fs::write(blob, "damaged\n").unwrap();
    }
    let out = exec(b.path(), cache.path());
    let seen = steps(&out);
    assert_eq!(status_of(&seen, "build").1, "success", "{seen:?}");
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(events.contains("does not match its digest"), "{events}");
    assert_eq!(
        std::fs::read_to_string(b.path().join("out/all.txt")).unwrap(),
        "hello\nworld\n"
    );
}

/// A repository whose one step (with inputs and outputs) appends a line
/// to a marker file each time it runs, and the submit that builds it.
struct Marked {
    body: Value,
    marker: std::path::PathBuf,
    _work: tempfile::TempDir,
    _repo: tempfile::TempDir,
}

impl Marked {
    fn new() -> Marked {
        let work = tempfile::tempdir().unwrap();
        let marker = work.path().join("ran");
        let config = unindent(
            r#"
            pipeline "ci" {
              step "build" {
                inputs = "src/*.txt", outputs = "out/all.txt",
                run = 'mkdir -p out && cat src/*.txt > out/all.txt && echo ran >> "$MARKER"',
              },
            }
            "#,
        );
        let repo =
            crate::agent::repo(&[("piper.lua", config.as_bytes()), ("src/a.txt", b"hello\n")]);
        let body = serde_json::json!({
            "repo": repo.path(), "pipeline": "ci",
            "env": { "MARKER": marker.to_str().unwrap() },
        });
        Marked {
            body,
            marker,
            _work: work,
            _repo: repo,
        }
    }
}

/// piperd keeps a cache in its data directory: every build has a new
/// workspace, and the second build of a commit fetches what the first
/// built (its log says so, and it ran nothing: the marker file it appends
/// to gets one line).
#[test]
fn piperd_builds_reuse_what_earlier_builds_made() {
    use crate::agent::Daemon;
    let daemon = Daemon::start(None);
    let marked = Marked::new();
    let (body, marker) = (&marked.body, &marked.marker);
    let first = daemon.queue(body);
    assert_eq!(daemon.wait_finished(first)["status"], "success");
    let second = daemon.queue(body);
    let build = daemon.wait_finished(second);
    assert_eq!(build["status"], "success");
    assert_eq!(build["steps"][0]["status"], "fetched", "{build}");
    assert_eq!(std::fs::read_to_string(marker).unwrap(), "ran\n");
}

/// A private nginx serving Bazel's HTTP cache protocol (WebDAV PUT) on a
/// free port, stopped when dropped. None (the test skips) without nginx.
struct Nginx {
    dir: tempfile::TempDir,
    url: String,
    _process: crate::harness::KillOnDrop,
}

impl Nginx {
    fn start(test: &str) -> Option<Nginx> {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(nginx) = nginx else {
            crate::harness::skip(test, "nginx is not installed (Debian nginx-light)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("store/.tmp")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "user root; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{}}\n\
             http {{ access_log off; client_body_temp_path {d}/store/.tmp; client_max_body_size 0;\n\
               server {{ listen 127.0.0.1:{port}; root {d}/store;\n\
                 location / {{ dav_methods PUT; create_full_put_path on; }} }} }}\n",
            d = dir.path().display()
        );
        std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
        let child = std::process::Command::new(nginx)
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let process = crate::harness::KillOnDrop(child);
        // Serving once it accepts a connection.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Some(Nginx {
            url: format!("http://127.0.0.1:{port}/piper"),
            dir,
            _process: process,
        })
    }

    /// The files the server holds, under `ac` or `cas`.
    fn files(&self, kind: &str) -> Vec<std::path::PathBuf> {
        let dir = self.dir.path().join("store/piper").join(kind);
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Nginx {
    /// SIGTERM, so that the master stops its workers too (SIGKILL, which
    /// `KillOnDrop` falls back to, would leave them running).
    fn drop(&mut self) {
        // SAFETY: a signal to a child this test started and still owns.
        unsafe { libc::kill(self._process.0.id() as i32, libc::SIGTERM) };
        let _ = self._process.0.wait();
    }
}

fn exec_remote(dir: &Path, disk: &Path, remote: &str, extra: &[&str]) -> Output {
    exec_with(dir, disk, &[&["--remote-cache", remote], extra].concat())
}

/// Two machines, as far as the cache can tell (two checkouts, two disk
/// caches), share results through a real HTTP cache server.
#[test]
fn checkouts_with_their_own_disk_caches_share_through_an_http_cache() {
    let test = "cache::checkouts_with_their_own_disk_caches_share_through_an_http_cache";
    let Some(server) = Nginx::start(test) else {
        return;
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (disk_a, disk_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    project(a.path());
    project(b.path());
    // A reader (upload off) leaves the server as it was.
    exec_remote(
        a.path(),
        disk_a.path(),
        &server.url,
        &["--remote-upload", "off"],
    );
    assert!(server.files("ac").is_empty(), "nothing uploaded");
    // A writer uploads what runs: the entry, and its blobs (output, log).
    // (A hit in its own disk cache would run nothing, so: a new one.)
    std::fs::remove_dir_all(a.path().join(".piper")).unwrap();
    let disk_a2 = tempfile::tempdir().unwrap();
    exec_remote(a.path(), disk_a2.path(), &server.url, &[]);
    assert_eq!(server.files("ac").len(), 1);
    assert_eq!(server.files("cas").len(), 2);

    let out = exec_remote(b.path(), disk_b.path(), &server.url, &[]);
    let seen = steps(&out);
    assert_eq!(status_of(&seen, "build").1, "fetched", "{seen:?}");
    assert!(status_of(&seen, "build").2.contains("built it"), "{seen:?}");
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(
        events.contains(&format!("fetched from remote cache {}", server.url)),
        "{events}"
    );
    assert_eq!(
        std::fs::read_to_string(b.path().join("out/all.txt")).unwrap(),
        "hello\nworld\n"
    );
}

/// A server that answers with damaged blobs, then none at all: warnings,
/// the steps run, nothing damaged lands in the tree or the disk cache.
#[test]
fn a_remote_cache_that_lies_or_is_gone_never_breaks_a_build() {
    let test = "cache::a_remote_cache_that_lies_or_is_gone_never_breaks_a_build";
    let Some(server) = Nginx::start(test) else {
        return;
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (disk_a, disk_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    project(a.path());
    project(b.path());
    exec_remote(a.path(), disk_a.path(), &server.url, &[]);
    for blob in server.files("cas") {
        std::fs::write(blob, "damaged\n").unwrap();
    }
    let out = exec_remote(
        b.path(),
        disk_b.path(),
        &server.url,
        &["--remote-upload", "off"],
    );
    let seen = steps(&out);
    assert_eq!(status_of(&seen, "build").1, "success", "{seen:?}");
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(events.contains("does not match its digest"), "{events}");
    assert_eq!(
        std::fs::read_to_string(b.path().join("out/all.txt")).unwrap(),
        "hello\nworld\n"
    );

    // Gone: connection refused is a warning, and the build goes on.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::remove_dir_all(b.path().join(".piper")).unwrap();
    let other_disk = tempfile::tempdir().unwrap();
    let out = exec_remote(b.path(), other_disk.path(), &format!("http://{gone}"), &[]);
    let seen = steps(&out);
    assert_eq!(status_of(&seen, "build").1, "success", "{seen:?}");
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(events.contains("remote cache:"), "{events}");
}

/// Two agents with their own data directories (and so their own disk
/// caches) share step results through `--remote-cache`.
#[test]
fn agents_share_results_through_a_remote_cache() {
    use crate::agent::Daemon;
    let test = "cache::agents_share_results_through_a_remote_cache";
    let Some(server) = Nginx::start(test) else {
        return;
    };
    let first = Daemon::start_with(None, &["--remote-cache", &server.url], None);
    let second = Daemon::start_with(None, &["--remote-cache", &server.url], None);
    let marked = Marked::new();
    let (body, marker) = (&marked.body, &marked.marker);
    let id = first.queue(body);
    assert_eq!(first.wait_finished(id)["status"], "success");
    assert_eq!(server.files("ac").len(), 1, "the first agent uploaded");
    let id = second.queue(body);
    let build = second.wait_finished(id);
    assert_eq!(build["steps"][0]["status"], "fetched", "{build}");
    assert!(
        build["steps"][0]["message"]
            .as_str()
            .unwrap()
            .contains("remote cache"),
        "{build}"
    );
    assert_eq!(std::fs::read_to_string(marker).unwrap(), "ran\n");
}

/// `--cache-verify` finds a step whose inputs are incomplete: it reads a
/// file it does not declare, so two checkouts with the same declared
/// inputs make different outputs; run anyway, the difference is a warning.
#[test]
fn cache_verify_finds_a_step_that_reads_an_undeclared_file() {
    let cache = tempfile::tempdir().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = unindent(
        r#"
        step "build" {
          inputs = "src/*.txt", outputs = "out/all.txt",
          run = "mkdir -p out && cat src/*.txt extra.cfg > out/all.txt",
        }
        pipeline "ci" { "build" }
        "#,
    );
    for (dir, extra) in [(a.path(), "one\n"), (b.path(), "two\n")] {
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("piper.lua"), &config).unwrap();
        std::fs::write(dir.join("src/a.txt"), "hello\n").unwrap();
        std::fs::write(dir.join("extra.cfg"), extra).unwrap();
    }
    exec(a.path(), cache.path());
    let out = exec_with(b.path(), cache.path(), &["--cache-verify"]);
    let seen = steps(&out);
    assert_eq!(status_of(&seen, "build").1, "success", "it ran: {seen:?}");
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(
        events.contains("cache verify: out/all.txt differs"),
        "{events}"
    );
    // What it made stays, and the cache keeps what it held.
    assert_eq!(
        std::fs::read_to_string(b.path().join("out/all.txt")).unwrap(),
        "hello\ntwo\n"
    );
}

/// A project of two cacheable steps, `shared` and `private`, where
/// `private` says `remote_cache = false` and `build` has the salt `salt`;
/// pipeline `ci` runs both, `quiet` (also `remote_cache = false`) `shared`.
fn opt_out_project(dir: &Path, salt: &str) {
    let config = unindent(&format!(
        r#"
        step "shared" {{
          inputs = "src/*.txt", outputs = "out/shared.txt", cache_salt = "{salt}",
          run = "mkdir -p out && cat src/*.txt > out/shared.txt",
        }}
        step "private" {{
          inputs = "src/*.txt", outputs = "out/private.txt", remote_cache = false,
          run = "mkdir -p out && cat src/*.txt > out/private.txt",
        }}
        pipeline "ci" {{ "shared", "private" }}
        pipeline "quiet" {{ "shared", remote_cache = false }}
        "#
    ));
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("piper.lua"), config).unwrap();
    std::fs::write(dir.join("src/a.txt"), "hello\n").unwrap();
}

/// `cache_salt` is part of the key: the same salt is the same work (a
/// second checkout fetches it), another salt is other work (it runs).
#[test]
fn a_cache_salt_makes_other_work_of_the_same_step() {
    let cache = tempfile::tempdir().unwrap();
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    opt_out_project(dirs[0].path(), "1");
    opt_out_project(dirs[1].path(), "1");
    opt_out_project(dirs[2].path(), "2");
    exec(dirs[0].path(), cache.path());
    let same = steps(&exec(dirs[1].path(), cache.path()));
    assert_eq!(status_of(&same, "shared").1, "fetched", "{same:?}");
    let other = steps(&exec(dirs[2].path(), cache.path()));
    assert_eq!(status_of(&other, "shared").1, "success", "{other:?}");
    // The salt is about the cache, not the step: `private` has none, and
    // is fetched in every checkout.
    assert_eq!(status_of(&other, "private").1, "fetched", "{other:?}");
}

/// `remote_cache = false` on a step keeps its results on this machine
/// (its disk cache), and on a pipeline keeps that pipeline's run from the
/// remote cache altogether: nothing fetched from it, nothing sent.
#[test]
fn remote_cache_false_keeps_a_step_or_a_pipeline_off_the_remote_cache() {
    let test = "cache::remote_cache_false_keeps_a_step_or_a_pipeline_off_the_remote_cache";
    let Some(server) = Nginx::start(test) else {
        return;
    };
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let disks = [(); 3].map(|_| tempfile::tempdir().unwrap());
    for dir in &dirs {
        opt_out_project(dir.path(), "1");
    }
    // Only `shared` is uploaded: one entry, one blob (its output; neither
    // step prints anything).
    exec_remote(dirs[0].path(), disks[0].path(), &server.url, &[]);
    assert_eq!(server.files("ac").len(), 1);
    assert_eq!(server.files("cas").len(), 1);

    // Another machine fetches `shared`, runs `private`.
    let seen = steps(&exec_remote(
        dirs[1].path(),
        disks[1].path(),
        &server.url,
        &[],
    ));
    assert_eq!(status_of(&seen, "shared").1, "fetched", "{seen:?}");
    assert_eq!(status_of(&seen, "private").1, "success", "{seen:?}");
    assert_eq!(server.files("ac").len(), 1, "`private` was not sent");

    // A run of `quiet` does not ask the remote cache: explain says so too
    // (where a run of `ci` would).
    let explain = |pipeline: &str| {
        let out = std::process::Command::new(PIPER)
            .args(["explain", pipeline, "--remote-cache", &server.url])
            .arg("--disk-cache")
            .arg(disks[2].path())
            .current_dir(dirs[2].path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = explain("ci");
    assert!(said.contains("looked up in remote cache"), "{said}");
    let said = explain("quiet");
    assert!(!said.contains("remote cache"), "{said}");
    let out = std::process::Command::new(PIPER)
        .args([
            "exec",
            "quiet",
            "--json",
            "--remote-cache",
            &server.url,
            "--disk-cache",
        ])
        .arg(disks[2].path())
        .current_dir(dirs[2].path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let seen = steps(&out);
    assert_eq!(status_of(&seen, "shared").1, "success", "{seen:?}");
}

/// A step whose outputs are a file and a symbolic link to it, as a
/// shared library's `libfoo.so` -> `libfoo.so.1`.
pub(crate) fn symlink_project(dir: &Path) {
    let config = unindent(
        r#"
        step "lib" {
          inputs = "src/*.txt", outputs = { "out/libfoo.so.1", "out/libfoo.so" },
          run = "mkdir -p out && cp src/lib.txt out/libfoo.so.1 && ln -sf libfoo.so.1 out/libfoo.so",
        }
        pipeline "ci" { "lib" }
        "#,
    );
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("piper.lua"), config).unwrap();
    std::fs::write(dir.join("src/lib.txt"), "the library\n").unwrap();
}

/// A symlink among the outputs is fetched as the same link, not as a copy
/// of what it points at.
#[test]
fn a_symlink_output_is_fetched_as_a_link() {
    let cache = tempfile::tempdir().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    symlink_project(a.path());
    symlink_project(b.path());
    exec(a.path(), cache.path());
    let out = exec(b.path(), cache.path());
    let seen = steps(&out);
    assert_eq!(status_of(&seen, "lib").1, "fetched", "{seen:?}");
    let link = b.path().join("out/libfoo.so");
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("libfoo.so.1"));
    assert_eq!(std::fs::read_to_string(link).unwrap(), "the library\n");
    // Fetched is as good as built.
    let again = steps(&exec(b.path(), cache.path()));
    assert_eq!(status_of(&again, "lib").1, "up_to_date", "{again:?}");
}
