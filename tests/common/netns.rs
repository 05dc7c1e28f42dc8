//! A private network namespace for fault tests: a link can be cut there without
//! touching the machine's own.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::mount::run;

/// Longest a command in the namespace (`ip`) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A private network namespace, held open by a `sleep` started with `unshare --net`.
pub struct Netns {
    holder: Child,
    /// The namespace's `/proc/PID/ns/net`, for `setns` (the strict server's `netns`).
    pub path: PathBuf,
}

impl Netns {
    /// A new namespace with its loopback up.
    pub fn new() -> Netns {
        let holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare --net (util-linux)");
        let path = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
        let ours = fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_link(&path).ok().is_none_or(|ns| ns == ours) {
            assert!(
                Instant::now() < deadline,
                "unshare --net did not take effect"
            );
            thread::sleep(Duration::from_millis(10));
        }
        let ns = Netns { holder, path };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The command prefix that runs a program in this namespace.
    pub fn nsenter(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--net={}", self.path.display()),
            "--".into(),
        ]
    }

    /// Runs a command in the namespace; panics if it fails.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path.display()))
            .arg("--")
            .args(args);
        let out = run(&mut command, COMMAND_TIMEOUT);
        assert!(
            out.status.success(),
            "{args:?} in the test namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
