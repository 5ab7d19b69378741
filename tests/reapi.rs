//! Issue 30, the Remote Execution API cache over gRPC, against a real
//! BuildGrid (cache-only: CAS, ActionCache, ByteStream) that each test
//! starts on a free port, and read back by a client that is not Piper
//! (Python with BuildGrid's generated REAPI messages).

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::cache::{exec_with, status_of, steps};
use crate::harness::unindent;

/// A BuildGrid server of this test's own.
pub(crate) struct BuildGrid {
    /// First: the server ends before its directory goes.
    process: Option<crate::harness::KillOnDrop>,
    pub(crate) address: String,
    pub(crate) python: PathBuf,
    pub(crate) dir: tempfile::TempDir,
    bgd: PathBuf,
}

impl BuildGrid {
    /// BuildGrid from `$PIPER_TEST_BUILDGRID` (a virtualenv with
    /// `buildgrid` installed: `.ci/run` makes one), else `bgd` on PATH.
    fn start(test: &str) -> Option<BuildGrid> {
        BuildGrid::start_with(test, "buildgrid-cache.yml", &[])
    }

    /// As [`BuildGrid::start`] with the configuration `config` (under
    /// tests/fixtures), its `@NAME@` placeholders replaced as `vars` say
    /// (`@PORT@` and `@DIR@` always). A `DATABASE_URL` (the scheduler's
    /// PostgreSQL database) is migrated first, as BuildGrid requires.
    pub(crate) fn start_with(test: &str, config: &str, vars: &[(&str, &str)]) -> Option<BuildGrid> {
        let venv = std::env::var_os("PIPER_TEST_BUILDGRID").map(PathBuf::from);
        let bin = venv.map(|v| v.join("bin")).or_else(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path).find(|d| d.join("bgd").is_file())
        });
        let Some(bin) = bin.filter(|b| b.join("bgd").is_file()) else {
            crate::harness::skip(
                test,
                "BuildGrid is not installed (PIPER_TEST_BUILDGRID: a venv with buildgrid==0.9.1)",
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(config),
        )
        .unwrap()
        .replace("@PORT@", &port.to_string())
        .replace("@DIR@", dir.path().to_str().unwrap());
        for (name, value) in vars {
            config = config.replace(&format!("@{name}@"), value);
        }
        std::fs::write(dir.path().join("buildgrid.yml"), config).unwrap();
        if let Some((_, url)) = vars.iter().find(|(name, _)| *name == "DATABASE_URL") {
            let migrated = std::process::Command::new(bin.join("bgd"))
                .args(["migrate", "apply", url])
                .output()
                .unwrap();
            assert!(
                migrated.status.success(),
                "bgd migrate: {}",
                String::from_utf8_lossy(&migrated.stderr)
            );
        }
        let mut grid = BuildGrid {
            address: format!("127.0.0.1:{port}"),
            python: bin.join("python"),
            bgd: bin.join("bgd"),
            dir,
            process: None,
        };
        grid.serve();
        Some(grid)
    }

    /// Starts `bgd` and waits until it serves: it binds after its services
    /// are set up, and a start takes seconds (Python imports).
    fn serve(&mut self) {
        let log = (std::fs::OpenOptions::new().create(true).append(true))
            .open(self.dir.path().join("bgd.log"))
            .unwrap();
        let child = std::process::Command::new(&self.bgd)
            .args(["server", "start"])
            .arg(self.dir.path().join("buildgrid.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.process = Some(crate::harness::KillOnDrop(child));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(&self.address).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "BuildGrid did not start: {}",
                std::fs::read_to_string(self.dir.path().join("bgd.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: no goodbye to anyone) and starts it
    /// again on the same port, with the same configuration and storage.
    pub(crate) fn restart(&mut self) {
        drop(self.process.take());
        self.serve();
    }

    pub(crate) fn url(&self) -> String {
        format!("grpc://{}", self.address)
    }
}

const SCRIPT: &str = "mkdir -p out && cat src/*.txt > out/all.txt && \
                      head -c 3000000 /dev/urandom > out/big.bin && echo built it";

/// One step with a small output and one over the batch size (3 MB: it
/// moves through ByteStream), whose bytes differ at every run.
fn project(dir: &Path) {
    let config = unindent(&format!(
        r#"
        step "build" {{
          inputs = "src/*.txt", outputs = {{ "out/all.txt", "out/big.bin" }},
          run = "{SCRIPT}",
        }}
        pipeline "ci" {{ "build" }}
        "#
    ));
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("piper.lua"), config).unwrap();
    std::fs::write(dir.join("src/a.txt"), "hello\n").unwrap();
    std::fs::write(dir.join("src/b.txt"), "world\n").unwrap();
}

fn exec_grpc(dir: &Path, disk: &Path, server: &BuildGrid, extra: &[&str]) -> Output {
    exec_with(
        dir,
        disk,
        &[&["--remote-cache", &server.url()], extra].concat(),
    )
}

/// Two machines, as far as the cache can tell (two checkouts, two disk
/// caches), share results through BuildGrid; a Python client computes the
/// same action key on its own and reads back the files Piper built.
#[test]
fn checkouts_share_through_a_reapi_cache_that_other_clients_read() {
    let test = "reapi::checkouts_share_through_a_reapi_cache_that_other_clients_read";
    let Some(server) = BuildGrid::start(test) else {
        return;
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (disk_a, disk_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    project(a.path());
    project(b.path());
    let built = steps(&exec_grpc(a.path(), disk_a.path(), &server, &[]));
    assert_eq!(status_of(&built, "build").1, "success", "{built:?}");

    let out = exec_grpc(b.path(), disk_b.path(), &server, &[]);
    let fetched = steps(&out);
    assert_eq!(status_of(&fetched, "build").1, "fetched", "{fetched:?}");
    assert!(
        status_of(&fetched, "build").2.contains("built it"),
        "{fetched:?}"
    );
    let events = String::from_utf8_lossy(&out.stdout);
    let from = format!("fetched from remote cache {}: 2 files", server.url());
    assert!(events.contains(&from), "{events}");
    for output in ["out/all.txt", "out/big.bin"] {
        assert_eq!(
            std::fs::read(a.path().join(output)).unwrap(),
            std::fs::read(b.path().join(output)).unwrap(),
            "{output}"
        );
    }

    let read = std::process::Command::new(&server.python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reapi_read.py"))
        .args([&server.address, a.path().to_str().unwrap(), SCRIPT])
        .args(["out/all.txt", "out/big.bin", "--", "src/a.txt", "src/b.txt"])
        .output()
        .unwrap();
    assert!(
        read.status.success() && read.stdout.starts_with(b"ok"),
        "{}{}",
        String::from_utf8_lossy(&read.stdout),
        String::from_utf8_lossy(&read.stderr)
    );
}

/// A server that is not there: one warning, the step runs, the build
/// succeeds; the header's value shows nowhere.
#[test]
fn a_reapi_cache_that_is_down_never_breaks_a_build_nor_shows_a_token() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (dir, disk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    project(dir.path());
    let url = format!("grpc://127.0.0.1:{port}");
    let out = exec_with(
        dir.path(),
        disk.path(),
        &[
            "--remote-cache",
            &url,
            "--remote-instance",
            "main",
            "--remote-header",
            "authorization=Bearer s3cret-token",
        ],
    );
    let seen = steps(&out);
    assert_eq!(status_of(&seen, "build").1, "success", "{seen:?}");
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(
        events.contains("step_warning") && events.contains(&url),
        "{events}"
    );
    let everything = [events.as_ref(), &String::from_utf8_lossy(&out.stderr)].concat();
    assert!(!everything.contains("s3cret"), "{everything}");
}

/// The CLI's `config.toml` sets the remote cache as the flags would; a
/// flag wins over it.
#[test]
fn the_cli_config_file_sets_the_remote_cache() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    project(dir.path());
    let config = dir.path().join("config.toml");
    let url = format!("grpc://127.0.0.1:{port}");
    std::fs::write(
        &config,
        format!(
            "remote_cache = \"{url}\"\nremote_instance = \"main\"\n\
             remote_headers = [\"authorization=Bearer s3cret-token\"]\nremote_upload = false\n"
        ),
    )
    .unwrap();
    // Each run as a fresh checkout with an empty disk cache: the remote is
    // asked.
    let exec = |extra: &[&str]| {
        let _ = std::fs::remove_dir_all(dir.path().join(".piper"));
        let disk = tempfile::tempdir().unwrap();
        std::process::Command::new(crate::harness::PIPER)
            .args(["exec", "ci", "--json", "--disk-cache"])
            .arg(disk.path())
            .args(extra)
            .env("PIPER_CONFIG", &config)
            .env_remove("PIPER_REMOTE_CACHE")
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = exec(&[]);
    assert!(out.status.success());
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(events.contains(&url), "the file's cache is used: {events}");
    assert!(!events.contains("s3cret"), "{events}");
    let out = exec(&["--remote-cache", "http://127.0.0.1:1/flag"]);
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(
        events.contains("127.0.0.1:1/flag") && !events.contains(&url),
        "{events}"
    );
}

/// What a remote executor or another client writes: a result whose output
/// is a directory (a `Tree`, with a nested directory and a symlink). A
/// checkout that never built it fetches it whole.
#[test]
fn an_output_directory_another_client_wrote_is_fetched_whole() {
    let test = "reapi::an_output_directory_another_client_wrote_is_fetched_whole";
    let Some(server) = BuildGrid::start(test) else {
        return;
    };
    let (dir, disk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let script = "mkdir -p out && cp src/a.txt out/a.txt";
    let config = format!(
        "step \"gen\" {{ inputs = \"src/*.txt\", outputs = \"out\", run = \"{script}\" }}\n\
         pipeline \"ci\" {{ \"gen\" }}\n"
    );
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("piper.lua"), config).unwrap();
    std::fs::write(dir.path().join("src/a.txt"), "hello\n").unwrap();
    let wrote = std::process::Command::new(&server.python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reapi_read.py"))
        .args([
            "--write-tree",
            &server.address,
            dir.path().to_str().unwrap(),
        ])
        .args([script, "out", "--", "src/a.txt"])
        .output()
        .unwrap();
    assert!(
        wrote.status.success(),
        "{}",
        String::from_utf8_lossy(&wrote.stderr)
    );

    let seen = steps(&exec_grpc(dir.path(), disk.path(), &server, &[]));
    let made = status_of(&seen, "gen");
    assert_eq!(made.1, "fetched", "{seen:?}");
    assert!(made.2.contains("made elsewhere"), "{seen:?}");
    let out = dir.path().join("out");
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    assert_eq!(read("a.txt"), "from another client\n");
    assert_eq!(read("sub/b.txt"), "nested\n");
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        Path::new("a.txt")
    );
}

/// A symlink among the outputs travels as a link, through the server and
/// back into another checkout.
#[test]
fn a_symlink_output_is_shared_as_a_link() {
    let test = "reapi::a_symlink_output_is_shared_as_a_link";
    let Some(server) = BuildGrid::start(test) else {
        return;
    };
    let dirs = [(); 2].map(|_| tempfile::tempdir().unwrap());
    let disks = [(); 2].map(|_| tempfile::tempdir().unwrap());
    for dir in &dirs {
        crate::cache::symlink_project(dir.path());
    }
    exec_grpc(dirs[0].path(), disks[0].path(), &server, &[]);
    let seen = steps(&exec_grpc(dirs[1].path(), disks[1].path(), &server, &[]));
    assert_eq!(status_of(&seen, "lib").1, "fetched", "{seen:?}");
    let link = dirs[1].path().join("out/libfoo.so");
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("libfoo.so.1"));
    assert_eq!(std::fs::read_to_string(link).unwrap(), "the library\n");
}
