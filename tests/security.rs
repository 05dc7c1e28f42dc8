//! Security properties of a real mount: the password never appears in argv or in any log
//! (even at trace level), unsafe password sources are refused, and the mount is private to
//! the mounting user unless `allow_other` is given.
//!
//! (Certificate pinning is tested in check_cli.rs; bad certificates and a refused
//! `AUTH TLS` in hostile.rs.)
//!
//! Needs root, /dev/fuse, fusermount3, setpriv (util-linux), and the test certificates,
//! credentials and data of `scripts/servers.sh start` (the servers themselves need not
//! run: these tests use the in-process strict server).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::mount::{run, scratch_dir, MountConfig, Mounted, ServerScratch};
use common::strict_server::{StrictServer, StrictServerOptions, TlsVersion};
use common::{env, Server, Tls};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn strict_server(password: &str) -> StrictServer {
    let env = env();
    StrictServer::start(StrictServerOptions::new(
        &env.data,
        env.certs.join("server.pem"),
        env.certs.join("server.key"),
        TlsVersion::Tls13,
        env.user.clone(),
        password,
    ))
    .unwrap()
}

fn config(server: &StrictServer) -> MountConfig {
    MountConfig::new(Server::External, Tls::V13)
        .port(server.port())
        .option("timeout=3")
}

/// `ftpsfs URL MOUNTPOINT -f` expected to stop at a configuration error: (exit code 2,
/// one line on stderr), never mounting.
fn config_error(config: &MountConfig) -> String {
    let failed = config.mount_failure(COMMAND_TIMEOUT);
    let lines = failed.lines();
    assert_eq!(failed.status.code(), Some(2), "{failed:?}");
    assert_eq!(lines.len(), 1, "{failed:?}");
    lines[0].to_string()
}

fn assert_reads_small(m: &Mounted) {
    assert_eq!(
        fs::read(m.join("small.txt")).unwrap(),
        fs::read(env().data.join("small.txt")).unwrap()
    );
}

#[test]
fn the_password_is_never_in_argv_or_any_log() {
    // Distinctive, so that any leak, whole, is found by a plain search.
    let password = "pw-Zq8-never-log-me-7731";
    let mut server = strict_server(password);
    let port = server.port();
    let mut traced = config(&server);
    traced.password = Some(password.into());
    let m = Mounted::with(traced.option("debug").env("RUST_LOG", "trace").dir_cache(1));
    let argv = fs::read(format!("/proc/{}/cmdline", m.pid())).unwrap();
    assert!(
        !text(&argv).contains(password),
        "the password is on the command line"
    );
    // Taken out of the environment: fusermount3 did not inherit it, and the block
    // /proc/PID/environ shows was blanked.
    let environ = fs::read(format!("/proc/{}/environ", m.pid())).unwrap();
    assert!(
        !text(&environ).contains(password),
        "the password is in the mount's environment"
    );
    assert_reads_small(&m);
    assert!(fs::read_dir(m.join("dir1")).unwrap().count() > 0);
    // A restart makes every connection log in again, after errors and retries.
    server.stop();
    let mut options = StrictServerOptions::new(
        &env().data,
        env().certs.join("server.pem"),
        env().certs.join("server.key"),
        TlsVersion::Tls13,
        env().user.clone(),
        password,
    );
    options.port = port;
    let server = StrictServer::start(options).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_reads_small(&m);
    assert!(fs::read_dir(m.join("dir1/dir2")).unwrap().count() > 0);
    let log = m.log();
    drop(m);
    assert!(
        log.contains("PASS ****"),
        "the login is not in the trace log:\n{log}"
    );
    assert!(
        !log.contains(password),
        "the password is in the trace log:\n{log}"
    );

    // A failed login, at trace level, through the mount and through `check -vv`.
    let wrong = "wrong-pw-Kx4-never-log-me";
    let mut bad = config(&server).option("debug").env("RUST_LOG", "trace");
    bad.password = Some(wrong.into());
    let failed = bad.mount_failure(COMMAND_TIMEOUT);
    assert!(failed.stderr.contains("530"), "{failed:?}");
    assert!(
        !failed.stderr.contains(wrong),
        "the password is in the output:\n{}",
        failed.stderr
    );
    for pw in [password, wrong] {
        let out = run(
            Command::new(env!("CARGO_BIN_EXE_ftpsfs"))
                .args(["check", "-vv", "--ca-file"])
                .arg(&env().ca)
                .arg(format!("ftp://{}@127.0.0.1:{port}/", env().user))
                .env("FTPSFS_PASSWORD", pw)
                .env("RUST_LOG", "trace"),
            COMMAND_TIMEOUT,
        );
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(all.contains("PASS ****"), "{all}");
        assert!(!all.contains(pw), "check -vv printed the password:\n{all}");
    }
}

#[test]
fn a_password_file_readable_by_everyone_is_refused() {
    let server = strict_server(&env().password);
    let dir = scratch_dir("pwfile");
    let file = dir.join("password");
    fs::write(&file, format!("{}\n", env().password)).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let mut refused = config(&server).option(&format!("password_file={}", file.display()));
    refused.no_password_env = true;
    let line = config_error(&refused);
    assert!(line.contains("open to other users (mode 0644)"), "{line}");
    assert!(!line.contains(&env().password), "{line}");

    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let mut accepted = config(&server).option(&format!("password_file={}", file.display()));
    accepted.no_password_env = true;
    let m = Mounted::with(accepted);
    assert_reads_small(&m);
    drop(m);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_netrc_with_a_password_must_be_private() {
    let server = strict_server(&env().password);
    let home = scratch_dir("home");
    let netrc = home.join(".netrc");
    fs::write(
        &netrc,
        format!(
            "machine 127.0.0.1 login {} password {}\n",
            env().user,
            env().password
        ),
    )
    .unwrap();
    fs::set_permissions(&netrc, fs::Permissions::from_mode(0o644)).unwrap();
    let with_home = |server: &StrictServer| {
        let mut config = config(server).env("HOME", &home);
        config.no_password_env = true;
        config
    };
    let line = config_error(&with_home(&server));
    assert!(line.contains("readable by other users"), "{line}");
    assert!(!line.contains(&env().password), "{line}");

    fs::set_permissions(&netrc, fs::Permissions::from_mode(0o600)).unwrap();
    let m = Mounted::with(with_home(&server));
    assert_reads_small(&m);
    drop(m);
    let _ = fs::remove_dir_all(&home);
}

#[test]
fn a_password_in_the_url_is_refused_without_echoing_it() {
    let dir = scratch_dir("urlpw");
    let mountpoint = dir.join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_ftpsfs"))
            .arg("ftp://alice:hunter2-in-argv@127.0.0.1:1/")
            .arg(&mountpoint)
            .arg("-f")
            .env_remove("FTPSFS_PASSWORD"),
        COMMAND_TIMEOUT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("do not put the password in the URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2-in-argv"), "{stderr}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn the_password_prompt_does_not_echo_and_is_not_logged() {
    let password = env().password.clone();
    let server = strict_server(&password);
    let home = scratch_dir("prompt-home");
    // `script` runs `ftpsfs check` on a pseudo-terminal fed from this pipe: no
    // FTPSFS_PASSWORD, no password file, no .netrc, so ftpsfs asks.
    let command = format!(
        "{} check -vv --ca-file {} ftp://{}@127.0.0.1:{}/",
        env!("CARGO_BIN_EXE_ftpsfs"),
        env().ca.display(),
        env().user,
        server.port()
    );
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("FTPSFS_PASSWORD")
        .env("HOME", &home)
        .env("RUST_LOG", "trace")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    // Typed only once the prompt is up (echo is off by then).
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut sent = false;
        loop {
            use std::io::{Read, Write};
            let n = stdout.read(&mut buf).unwrap_or(0);
            if n == 0 {
                return all;
            }
            all.extend_from_slice(&buf[..n]);
            if !sent && text(&all).contains("Password for") {
                std::thread::sleep(Duration::from_millis(200));
                let _ = stdin.write_all(format!("{password}\n").as_bytes());
                let _ = stdin.flush();
                sent = true;
            }
        }
    });
    let status = common::mount::wait_timeout(&mut child, COMMAND_TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("ftpsfs check with a prompt did not finish")
    });
    let output = text(&reader.join().unwrap());
    assert!(status.success(), "{output}");
    assert!(
        output.contains(&format!("Password for {}@127.0.0.1", env().user)),
        "{output}"
    );
    assert!(output.contains("PASS ****"), "{output}");
    assert!(output.contains("OK: "), "{output}");
    assert!(
        !output.contains(&env().password),
        "the typed password was echoed or logged:\n{output}"
    );
    let _ = fs::remove_dir_all(&home);
}

/// The super options (the last field) of the mount at `path` in /proc/self/mountinfo.
fn super_options(path: &Path) -> String {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter(|line| line.split(' ').nth(4) == path.to_str())
        .filter_map(|line| line.rsplit(' ').next())
        .next_back()
        .unwrap_or_else(|| panic!("{} not in mountinfo", path.display()))
        .to_string()
}

/// Runs a command as nobody (uid and gid 65534, no supplementary groups).
fn as_nobody(args: &[&str], path: &Path) -> Output {
    run(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(args)
            .arg(path)
            .env("LC_ALL", "C"),
        COMMAND_TIMEOUT,
    )
}

#[test]
fn the_mount_is_private_unless_allow_other() {
    let scratch = ServerScratch::new();
    let m = Mounted::new(Server::Strict, Tls::V13);
    let options = super_options(m.path());
    assert!(
        !options.contains("allow_other"),
        "a private mount has allow_other: {options}"
    );
    assert!(
        options.contains("user_id=0"),
        "mounted for another user: {options}"
    );
    let out = as_nobody(&["ls"], m.path());
    assert!(
        !out.status.success() && text(&out.stderr).contains("Permission denied"),
        "another user listed a private mount: {} {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = as_nobody(&["cat"], &m.join("small.txt"));
    assert!(
        !out.status.success() && text(&out.stderr).contains("Permission denied"),
        "another user read a private mount: {}",
        text(&out.stderr)
    );
    // Its owner can.
    assert_reads_small(&m);
    drop(m);

    let m = Mounted::with(MountConfig::new(Server::Strict, Tls::V13).option("allow_other"));
    assert!(super_options(m.path()).contains("allow_other"));
    let out = as_nobody(&["ls"], m.path());
    assert!(
        out.status.success() && text(&out.stdout).lines().any(|l| l == "small.txt"),
        "allow_other: {}",
        text(&out.stderr)
    );
    let out = as_nobody(&["cat"], &m.join("small.txt"));
    assert_eq!(
        text(&out.stdout),
        text(&fs::read(env().data.join("small.txt")).unwrap())
    );
    // The server sees every access as the mounting user's: with others let in, the
    // kernel checks the shown modes, and the root directory (0755, root's) is not
    // theirs to write in.
    assert!(super_options(m.path()).contains("default_permissions"));
    let target = m.join(&scratch.name).join("nobody-was-here");
    let out = as_nobody(&["touch"], &target);
    assert!(
        !out.status.success() && text(&out.stderr).contains("Permission denied"),
        "another user wrote through allow_other: {} {}",
        out.status,
        text(&out.stderr)
    );
    drop(m);

    // Turned off explicitly: the server alone decides, and lets them in.
    let m = Mounted::with(
        MountConfig::new(Server::Strict, Tls::V13).option("allow_other,no_default_permissions"),
    );
    assert!(!super_options(m.path()).contains("default_permissions"));
    let target = m.join(&scratch.name).join("nobody-was-here");
    let out = as_nobody(&["touch"], &target);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(scratch.dir.join("nobody-was-here").exists());
}
