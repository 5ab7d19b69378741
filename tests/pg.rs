//! PostgreSQL for tests: a fresh database per test on the server that
//! `PIPER_TEST_POSTGRES_URL` names, or else on a private server this test
//! process starts from the PostgreSQL binaries on the machine (`initdb`,
//! `postgres`), or else a loud skip.
//!
//! A private server is also what a test uses that must stop or break
//! PostgreSQL: it never touches the shared one other tests use.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::harness::{skip, unique};

/// A database of its own for one test, dropped afterwards.
pub struct Database {
    pub url: String,
    admin: String,
    name: String,
}

impl Database {
    /// None (after a loud skip note) when there is no server to use.
    pub fn create(test: &str) -> Option<Database> {
        let admin = match std::env::var("PIPER_TEST_POSTGRES_URL") {
            Ok(url) => url,
            Err(_) => match shared_private_server() {
                Some(server) => server.url("postgres"),
                None => {
                    skip(
                        test,
                        "PIPER_TEST_POSTGRES_URL is not set and no PostgreSQL binaries (initdb, postgres) were found",
                    );
                    return None;
                }
            },
        };
        Some(Database::create_on(&admin))
    }

    /// A fresh database on the server whose admin URL is `admin`.
    pub fn create_on(admin: &str) -> Database {
        let name = format!("piper_test_{}_{}", std::process::id(), unique());
        run(admin, &format!("CREATE DATABASE {name}"));
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("the PostgreSQL URL has no database part: {admin}"),
        };
        Database {
            url,
            admin: admin.to_string(),
            name,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // The server may be a private one that a test stopped on purpose.
        let _ = try_run(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// The private server shared by this test process's PostgreSQL tests when
/// no URL is given (started once, ended when the process exits).
fn shared_private_server() -> Option<&'static PrivateServer> {
    static SERVER: OnceLock<Option<PrivateServer>> = OnceLock::new();
    SERVER.get_or_init(PrivateServer::start).as_ref()
}

/// A PostgreSQL server of a test's own: a data directory in a temp dir,
/// a free port on 127.0.0.1, trust authentication, user `postgres`.
///
/// The server runs under a small shell that stops it (fast shutdown) when
/// its stdin closes: when `stop` drops the pipe, or when the test process
/// dies, so no server outlives the tests.
pub struct PrivateServer {
    dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    guard: std::sync::Mutex<Option<Child>>,
}

impl PrivateServer {
    /// None when the PostgreSQL server binaries are not on this machine.
    pub fn start() -> Option<PrivateServer> {
        let bin = server_bin_dir()?;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        as_postgres_user(dir.path());
        let status = server_command(
            &bin,
            &format!(
                "initdb -D '{}' -U postgres --auth=trust -E UTF8 --no-sync >/dev/null",
                data.display()
            ),
        )
        .status()
        .unwrap();
        assert!(status.success(), "initdb failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = PrivateServer {
            dir,
            port,
            bin,
            guard: std::sync::Mutex::new(None),
        };
        server.resume();
        Some(server)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server (again, after `stop`) and waits until it answers.
    pub fn resume(&self) {
        let script = format!(
            "postgres -D '{data}' -p {port} -k '{data}' -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 >'{data}/../server.log' 2>&1 & pid=$!; cat >/dev/null; kill -INT $pid; wait $pid",
            data = self.data().display(),
            port = self.port
        );
        let child = server_command(&self.bin, &script)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        *self.guard.lock().unwrap() = Some(child);
        for _ in 0..300 {
            if try_run(&self.url("postgres"), "SELECT 1").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        panic!("the private PostgreSQL server did not start:\n{log}");
    }

    /// Stops the server (fast shutdown: connections are cut) and waits
    /// until it is gone.
    pub fn stop(&self) {
        if let Some(mut child) = self.guard.lock().unwrap().take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where `initdb` and `postgres` are: on PATH, or Debian's versioned dir.
fn server_bin_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut dirs: Vec<PathBuf> = versions.flatten().map(|v| v.path().join("bin")).collect();
        dirs.sort();
        candidates.extend(dirs.into_iter().rev());
    }
    candidates.into_iter().find_map(|dir| {
        let real = std::fs::canonicalize(dir.join("initdb")).ok()?;
        let bin = real.parent()?.to_path_buf();
        bin.join("postgres").is_file().then_some(bin)
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// PostgreSQL refuses to run as root: there, the server runs as the
/// `postgres` user, which must own its directory.
fn as_postgres_user(dir: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "chown of the private server's dir failed");
    }
}

fn server_command(bin: &Path, script: &str) -> Command {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "env"]);
        c.arg(format!("PATH={path}"));
        c.args(["sh", "-c", script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.env("PATH", path).args(["-c", script]);
        c
    };
    command.current_dir("/");
    command
}

fn run(url: &str, sql: &str) {
    try_run(url, sql).unwrap_or_else(|e| panic!("{sql} on {url}: {e}"));
}

fn try_run(url: &str, sql: &str) -> Result<(), String> {
    crate::harness::block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

#[test]
fn a_private_server_starts_stops_and_resumes() {
    let Some(server) = PrivateServer::start() else {
        skip(
            "pg::a_private_server_starts_stops_and_resumes",
            "no PostgreSQL server binaries (initdb, postgres) on this machine",
        );
        return;
    };
    let db = Database::create_on(&server.url("postgres"));
    run(&db.url, "CREATE TABLE t (x int)");
    server.stop();
    assert!(try_run(&db.url, "SELECT 1").is_err());
    server.resume();
    run(&db.url, "INSERT INTO t VALUES (1)");
}
