//! pjdfstest, the POSIX file system conformance suite (its Rust port, built by
//! scripts/install-deps.sh), on real mounts of vsftpd and ProFTPD: eight groups of
//! checks (mkdir rmdir unlink rename open truncate ftruncate utimensat).
//!
//! Every check FTP cannot pass is listed in `tests/data/pjdfstest/SERVER.toml` as an
//! expected failure, under the class docs/SEMANTICS.md gives for it. pjdfstest fails
//! the run on any other failure, and on an expected failure that passes (the list must
//! then shrink): both fail this test.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::mount::{run, MountConfig, Mounted, ServerScratch};
use common::{Server, Tls};

/// The groups run: what the suite checks of the calls a mount's users make.
const GROUPS: [&str; 8] = [
    "mkdir",
    "rmdir",
    "unlink",
    "rename",
    "open",
    "truncate",
    "ftruncate",
    "utimensat",
];

/// The whole run takes about 30 s a server; a hang must not stall CI.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

fn pjdfstest_binary() -> PathBuf {
    let path = std::env::var_os("FTPSFS_PJDFSTEST").map_or_else(
        || {
            let pkgs = std::env::var_os("FTPSFS_PKG_DIR")
                .map_or_else(|| PathBuf::from("/var/tmp/ftpsfs-pkgs"), PathBuf::from);
            pkgs.join("pjdfstest/bin/pjdfstest")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-deps.sh (as root), which builds it",
        path.display()
    );
    path
}

/// What one line of pjdfstest's output says of one check.
fn outcome(line: &str) -> Option<(&str, &'static str)> {
    let name = line.split_whitespace().next()?;
    let verdict = [
        ("PASSED UNEXPECTEDLY", "passed unexpectedly"),
        ("failed as expected", "expected failure"),
        ("FAILED", "FAILED"),
        ("skipped", "skipped"),
        ("ok", "passed"),
    ]
    .into_iter()
    .find(|(tail, _)| line.trim_end().ends_with(tail))?
    .1;
    name.contains("::").then_some((name, verdict))
}

/// Removes colour codes, which pjdfstest writes even into a pipe.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn conformance(server: Server, label: &str, writeback: bool) {
    let binary = pjdfstest_binary();
    let config = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/pjdfstest")
        .join(format!("{label}.toml"));
    let scratch = ServerScratch::new();
    // pjdfstest switches to other users (nobody, tests): they must reach the mount.
    // noexec skips the two ETXTBSY checks, which race on any FUSE mount: pjdfstest
    // opens the program for writing as soon as spawn returns, while the kernel may
    // still be reading it through the mount (1 run in 4 here); docs/SEMANTICS.md.
    let mut mount = MountConfig::new(server, Tls::V13)
        .remote_dir(&scratch.name)
        .option("allow_other")
        .option("noexec");
    let cache = common::mount::scratch_dir("pjdfstest-cache");
    if writeback {
        mount = mount
            .option("writeback")
            .option(&format!("cache_dir={}", cache.display()));
    }
    let m = Mounted::with(mount);
    let out = run(
        Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(m.path())
            .args(GROUPS)
            .current_dir(m.path())
            .env("RUST_BACKTRACE", "0"),
        RUN_TIMEOUT,
    );
    let stdout = plain(&String::from_utf8_lossy(&out.stdout));
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut lines = stdout.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((name, verdict)) = outcome(line) else {
            continue;
        };
        let group = name.split("::").next().unwrap_or(name);
        *counts.entry((group, verdict)).or_default() += 1;
        if matches!(verdict, "FAILED" | "passed unexpectedly") {
            // pjdfstest gives the failed assertion on the next line, indented.
            let why = lines
                .next_if(|l| l.starts_with('\t'))
                .map_or("", |l| l.trim());
            wrong.push(format!("{name}: {verdict} {why}"));
        }
    }
    let mut report = String::new();
    for group in GROUPS {
        let count = |verdict| counts.get(&(group, verdict)).copied().unwrap_or(0);
        report.push_str(&format!(
            "{group:>10}: {} passed, {} expected failures, {} skipped, {} FAILED, {} passed unexpectedly\n",
            count("passed"),
            count("expected failure"),
            count("skipped"),
            count("FAILED"),
            count("passed unexpectedly"),
        ));
    }
    let label = if writeback {
        format!("{label} with -o writeback")
    } else {
        label.to_string()
    };
    eprintln!("pjdfstest on {label}:\n{report}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or("no summary line");
    assert!(
        counts.values().sum::<usize>() > 150,
        "pjdfstest ran too few checks ({summary}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && wrong.is_empty(),
        "pjdfstest on {label}: {summary}\n{report}\nnot as {} says:\n  {}\n\
         (a failure outside the list is a bug to fix, or one more of FTP's limits to \
         class in docs/SEMANTICS.md; an expected failure that passes leaves the list)\n\
         stderr: {}",
        config.display(),
        wrong.join("\n  "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pjdfstest_on_vsftpd() {
    conformance(Server::Vsftpd, "vsftpd", false)
}

/// The same checks, the same expected failures: write-back changes when data reaches the
/// server, not what the mount shows.
#[test]
fn pjdfstest_on_vsftpd_with_writeback() {
    conformance(Server::Vsftpd, "vsftpd", true)
}

#[test]
fn pjdfstest_on_proftpd() {
    conformance(Server::Proftpd, "proftpd", false)
}

#[test]
fn outcomes_are_read_from_pjdfstest_lines() {
    assert_eq!(
        outcome("mkdir::eloop_comp                      FAILED"),
        Some(("mkdir::eloop_comp", "FAILED"))
    );
    assert_eq!(
        outcome("open::etxtbsy               failed as expected"),
        Some(("open::etxtbsy", "expected failure"))
    );
    assert_eq!(
        outcome("rmdir::erofs              skipped"),
        Some(("rmdir::erofs", "skipped"))
    );
    assert_eq!(
        outcome("utimensat::y2038        PASSED UNEXPECTEDLY"),
        Some(("utimensat::y2038", "passed unexpectedly"))
    );
    assert_eq!(
        outcome("mkdir::enoent_comp                      ok"),
        Some(("mkdir::enoent_comp", "passed"))
    );
    assert_eq!(outcome("Summary: 1 failed"), None);
    assert_eq!(
        plain("\u{1b}[34mmkdir::x\u{1b}[0m \u{1b}[32mok\u{1b}[0m"),
        "mkdir::x ok"
    );
}
