//! Azurite's Table service on a free loopback port, for the tests of the Table ledger: the
//! npm package `azurite` (Microsoft's storage emulator) is installed once per target directory
//! if missing, started in memory, and stopped when the handle is dropped. Nothing here is
//! optional: a missing `npm` or an emulator that does not come up is an error naming why, so
//! a test that needs it fails instead of skipping.

use std::fs::{self, File};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pipeline::table::TableAuth;

/// The npm package and version range installed (`.ci/run` installs the same).
pub const PACKAGE: &str = "azurite@3";
/// The emulator's well-known account and key (Azurite README, "Default storage account").
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// How long the emulator may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AzuriteError {
    #[error("cannot install {PACKAGE} into {dir}: {why}")]
    Install { dir: PathBuf, why: String },
    #[error("Azurite did not start on 127.0.0.1:{port}: {why}")]
    Start { port: u16, why: String },
    #[error("Azurite: {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AzuriteError {
    let what = what.into();
    move |source| AzuriteError::Io { what, source }
}

/// A running Azurite Table service; killed (and reaped) on drop.
pub struct Azurite {
    child: Child,
    endpoint: String,
    /// Its working directory and log, removed on drop.
    dir: PathBuf,
}

impl Azurite {
    /// Installs Azurite if needed and starts its Table service on a free loopback port.
    pub fn start() -> Result<Azurite, AzuriteError> {
        let bin = install(&install_dir())?;
        let dir =
            std::env::temp_dir().join(format!("vnet-migrate-azurite-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        // A port found free can be taken before Azurite binds it: try a few.
        let mut last = None;
        for _ in 0..3 {
            match spawn(&bin, &dir) {
                Ok((child, port)) => {
                    return Ok(Azurite {
                        child,
                        endpoint: format!("http://127.0.0.1:{port}/{ACCOUNT}"),
                        dir,
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        let _ = fs::remove_dir_all(&dir);
        Err(last.expect("tried at least once"))
    }

    /// The Table endpoint, path-style: `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Shared Key Lite with the well-known key.
    pub fn auth() -> TableAuth {
        TableAuth::shared_key(KEY).expect("the well-known key is base64")
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `<target dir>/azurite` when running from a Cargo target directory (test binaries live in
/// `<target>/<profile>/deps`), so the install is shared by every test run of the checkout;
/// otherwise under the system temp dir.
fn install_dir() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let target = exe.as_deref().and_then(|e| {
        let deps = e.parent()?;
        (deps.file_name()? == "deps").then(|| deps.parent()?.parent())?
    });
    match target {
        Some(t) => t.join("azurite"),
        None => std::env::temp_dir().join("vnet-migrate-azurite"),
    }
}

/// The `azurite-table` launcher in `dir`, installed with npm unless it is there. Test
/// processes running at once take turns through a lock file.
fn install(dir: &Path) -> Result<PathBuf, AzuriteError> {
    let bin = dir.join("node_modules/.bin/azurite-table");
    fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let lock = File::create(dir.join(".lock")).map_err(io("creating the install lock"))?;
    lock.lock().map_err(io("taking the install lock"))?;
    if bin.exists() {
        return Ok(bin);
    }
    let failed = |why: String| AzuriteError::Install {
        dir: dir.to_path_buf(),
        why,
    };
    let out = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(dir)
        .arg(PACKAGE)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            failed(format!(
                "npm could not be run (node and npm are needed): {e}"
            ))
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(failed(format!(
            "npm install failed ({}): {}",
            out.status,
            tail(&stderr)
        )));
    }
    if !bin.exists() {
        return Err(failed(format!(
            "npm install succeeded but {} is missing",
            bin.display()
        )));
    }
    Ok(bin)
}

/// Starts the Table service on a port free a moment ago and waits until it accepts
/// connections.
fn spawn(bin: &Path, dir: &Path) -> Result<(Child, u16), AzuriteError> {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(io("finding a free loopback port"))?
        .port();
    let log_path = dir.join(format!("azurite-{port}.log"));
    let log = File::create(&log_path).map_err(io("creating the Azurite log"))?;
    let log_err = log.try_clone().map_err(io("creating the Azurite log"))?;
    let mut child = Command::new(bin)
        .args(["--tableHost", "127.0.0.1", "--tablePort", &port.to_string()])
        // In memory, any API version, unknown headers ignored, and no telemetry: the tests
        // talk to loopback only.
        .args([
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(io(format!("running {}", bin.display())))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let started = Instant::now();
    let failed = |child: &mut Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        let mut log = String::new();
        let _ = File::open(&log_path).and_then(|mut f| f.read_to_string(&mut log));
        AzuriteError::Start {
            port,
            why: format!("{why}; its output: {}", tail(&log)),
        }
    };
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok((child, port));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(failed(&mut child, format!("it exited ({status})")));
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(failed(
                &mut child,
                format!("not listening after {START_TIMEOUT:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last lines of a tool's output, enough to see why it failed.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
