//! The `clientele` binary as a child process, for tests that must kill or signal a real server.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ADMIN_SECRET;

/// A `clientele serve` process on a random port.
pub struct HubProcess {
    pub child: Child,
    pub base_url: String,
}

impl HubProcess {
    /// Starts `binary serve` on `database_url` with the test admin key, in `dir`, and waits until
    /// it listens.
    pub fn start(binary: &Path, database_url: &str, dir: &Path) -> HubProcess {
        Self::start_with(binary, database_url, dir, &[])
    }

    /// [`HubProcess::start`] with more `serve` flags.
    pub fn start_with(binary: &Path, database_url: &str, dir: &Path, flags: &[&str]) -> HubProcess {
        let mut child = Command::new(binary)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database",
                database_url,
            ])
            .args(flags)
            .current_dir(dir)
            .env("CLIENTELE_BOOTSTRAP_KEY", ADMIN_SECRET)
            .env("CLIENTELE_LOG_FORMAT", "json")
            .env_remove("CLIENTELE_MASTER_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the clientele binary");
        let stdout = child.stdout.take().expect("stdout");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            assert!(Instant::now() < deadline, "the hub did not start listening");
            let line = lines
                .next()
                .expect("the hub exited before listening")
                .expect("read the hub's log");
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(address) = event["fields"]["address"].as_str()
            {
                break address.to_owned();
            }
        };
        // Keep draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        HubProcess {
            child,
            base_url: format!("http://{address}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit and returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
