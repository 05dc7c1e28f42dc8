//! Servers that answer out of order, in the filesystem layer over the in-process strict
//! server's async mode (each command as if on its own task: pipelined commands answered
//! out of order, a transfer command refused before its data connection, transfers' and
//! ABOR's replies late). With `pipelining=auto` no operation fails; with `on` they do,
//! which shows that the workload meets the server's disorder.

mod common;

use std::fs;
use std::time::Duration;

use common::content;
use common::local::{LocalConfig, LocalFs};
use ftpsfs::fs::meta::inode::ROOT_INODE;
use ftpsfs::fs::ops::namespace::RenameFlags;
use ftpsfs::fs::write::file::{Closer, OpenMode};
use ftpsfs::fs::FtpFs;
use ftpsfs::ftp::PipeliningMode;

const WRITE: OpenMode = OpenMode {
    read: false,
    write: true,
    truncate: false,
};
const READ: OpenMode = OpenMode {
    read: true,
    write: false,
    truncate: false,
};
const FILES: usize = 12;

/// Writes a new file and closes it.
async fn write_new(fs: &FtpFs, parent: u64, name: &str, data: &[u8]) -> Result<(), String> {
    let (_, opened) = fs
        .create(parent, name.as_bytes(), 0o644, WRITE, 1)
        .await
        .map_err(|e| format!("create {name}: {e}"))?;
    let written = fs.write(opened.handle, 0, data.to_vec(), 1).await;
    let closed = fs.flush(opened.handle, Closer::Program).await;
    fs.release(opened.handle).await;
    written.map_err(|e| format!("write {name}: {e}"))?;
    closed.map_err(|e| format!("close {name}: {e}"))
}

/// Reads `len` bytes at `offset` of `ino`.
async fn read_at(fs: &FtpFs, ino: u64, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    let opened = fs
        .open(ino, READ, 1)
        .await
        .map_err(|e| format!("open: {e}"))?;
    let mut out = Vec::new();
    let mut result = Ok(());
    while out.len() < len {
        match fs
            .read(
                opened.handle,
                offset + out.len() as u64,
                (len - out.len()) as u32,
            )
            .await
        {
            Ok(data) if data.is_empty() => break,
            Ok(data) => out.extend_from_slice(&data),
            Err(e) => {
                result = Err(format!("read at {offset}: {e}"));
                break;
            }
        }
    }
    fs.release(opened.handle).await;
    result.map(|()| out)
}

/// Files written, read back, renamed and removed, a directory made and removed, and
/// random reads of a large file (each a ranged download given up with ABOR); returns
/// every error a program would have seen.
async fn workload(local: &LocalFs) -> Vec<String> {
    let fs = &local.fs;
    let mut errors = Vec::new();
    let big = content(6 << 20, 99);
    fs::write(local.on_server("big"), &big).unwrap();

    let dir = match fs.mkdir(ROOT_INODE, b"d", 0o755).await {
        Ok(attr) => attr.ino,
        Err(e) => return vec![format!("mkdir d: {e}")],
    };
    for i in 0..FILES {
        let data = content(1024 * (1 + i as u64 * 5), i as u64);
        if let Err(e) = write_new(fs, dir, &format!("f{i}"), &data).await {
            errors.push(e);
        }
    }
    for i in 0..FILES {
        let expected = content(1024 * (1 + i as u64 * 5), i as u64);
        match fs.lookup(dir, format!("f{i}").as_bytes()).await {
            Ok(attr) => match read_at(fs, attr.ino, 0, expected.len() + 1).await {
                Ok(read) if read == expected => {}
                Ok(read) => {
                    errors.push(format!("f{i}: {} bytes read, not its content", read.len()))
                }
                Err(e) => errors.push(format!("f{i}: {e}")),
            },
            Err(e) => errors.push(format!("lookup f{i}: {e}")),
        }
    }
    for i in 0..FILES / 2 {
        let renamed = fs
            .rename(
                dir,
                format!("f{i}").as_bytes(),
                dir,
                format!("g{i}").as_bytes(),
                RenameFlags::default(),
            )
            .await;
        if let Err(e) = renamed {
            errors.push(format!("rename f{i}: {e}"));
        }
    }
    match fs.lookup(ROOT_INODE, b"big").await {
        Ok(attr) => {
            for k in 0..8u64 {
                let offset = (k * 769 * 1024 + 4096 * k) % (big.len() as u64 - 4096);
                match read_at(fs, attr.ino, offset, 4096).await {
                    Ok(read) if read[..] == big[offset as usize..offset as usize + 4096] => {}
                    Ok(_) => errors.push(format!("big at {offset}: wrong bytes")),
                    Err(e) => errors.push(format!("big: {e}")),
                }
            }
        }
        Err(e) => errors.push(format!("lookup big: {e}")),
    }
    for i in 0..FILES {
        let name = if i < FILES / 2 {
            format!("g{i}")
        } else {
            format!("f{i}")
        };
        if let Err(e) = fs.unlink(dir, name.as_bytes()).await {
            errors.push(format!("unlink {name}: {e}"));
        }
    }
    if let Err(e) = fs.rmdir(ROOT_INODE, b"d").await {
        errors.push(format!("rmdir d: {e}"));
    }
    errors
}

fn reordering(pipelining: PipeliningMode) -> LocalFs {
    LocalFs::with(LocalConfig {
        pipelining,
        async_replies: true,
        dir_ttl: Duration::from_secs(1),
        ..LocalConfig::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_finds_a_reordering_server_at_first_login_and_nothing_fails() {
    let local = reordering(PipeliningMode::Auto);
    let errors = workload(&local).await;
    assert!(errors.is_empty(), "errors: {errors:#?}");
    assert_eq!(local.server_names(""), vec!["big".to_string()]);
    let commands = local.fs.report().commands;
    assert!(
        commands.starts_with("one command at a time (pipelining=auto: it answered NOOP, PWD, NOOP"),
        "{commands}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_steps_back_when_a_server_starts_reordering_and_nothing_fails() {
    let local = LocalFs::with(LocalConfig {
        dir_ttl: Duration::from_secs(1),
        ..LocalConfig::default()
    });
    // The first login's probe finds replies in order; then the server changes.
    fs::write(local.on_server("big"), content(6 << 20, 99)).unwrap();
    local.fs.lookup(ROOT_INODE, b"big").await.unwrap();
    assert!(local.fs.report().commands.starts_with("pipelined"));
    local.server.set_async_replies(true);
    let errors = workload(&local).await;
    assert!(errors.is_empty(), "errors: {errors:#?}");
    assert_eq!(local.server_names(""), vec!["big".to_string()]);
    let commands = local.fs.report().commands;
    assert!(
        commands.starts_with("one command at a time (pipelining=auto: it "),
        "{commands}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_on_a_reordering_server_fails_operations_but_never_misreads() {
    let local = reordering(PipeliningMode::On);
    let errors = workload(&local).await;
    assert!(!errors.is_empty(), "the server's disorder went unnoticed");
    // Whatever failed, nothing reported as done is missing or wrong: a failed write
    // leaves no file, and the workload's own reads compare bytes.
    assert!(
        errors
            .iter()
            .all(|e| !e.contains("not its content") && !e.contains("wrong bytes")),
        "{errors:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_off_is_exact_on_a_reordering_server() {
    let local = reordering(PipeliningMode::Off);
    let errors = workload(&local).await;
    assert!(errors.is_empty(), "errors: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_connection_breaks_after_abor_gets_none_and_reads_work() {
    let local = reordering(PipeliningMode::Auto);
    local.server.set_break_after_abort(true);
    let errors = workload(&local).await;
    assert!(errors.is_empty(), "errors: {errors:#?}");
    let commands = local.fs.report().commands;
    assert!(commands.contains("; no ABOR ("), "{commands}");
}

/// Real mounts of a strict server in async mode: what programs do, exact on the server's
/// disk, with `pipelining=auto`; with `on`, the same shows errors.
mod mounted {
    use std::fs;
    use std::path::Path;
    use std::process::Command;
    use std::time::Duration;

    use super::common::content;
    use super::common::mount::{read_at_most, run, scratch_dir, MountConfig, Mounted};
    use super::common::strict_server::{StrictServer, StrictServerOptions, TlsVersion};
    use super::common::{env, Server, Tls};

    fn async_server(root: &Path) -> StrictServer {
        let env = env();
        let server = StrictServer::start(StrictServerOptions {
            writable: true,
            rename_over_existing: true,
            ..StrictServerOptions::new(
                root,
                env.certs.join("server.pem"),
                env.certs.join("server.key"),
                TlsVersion::Tls13,
                env.user.clone(),
                &env.password,
            )
        })
        .expect("start the strict server");
        server.set_async_replies(true);
        server
    }

    fn mount(server: &StrictServer, pipelining: &str) -> Mounted {
        Mounted::with(
            MountConfig::new(Server::External, Tls::V13)
                .port(server.port())
                .option(&format!("pipelining={pipelining}")),
        )
    }

    /// Runs `script` with bash in `dir`; its status and output.
    fn sh(script: &str, dir: &Path) -> (bool, String) {
        let out = run(
            Command::new("bash")
                .arg("-c")
                .arg(format!("set -e\n{script}"))
                .current_dir(dir),
            Duration::from_secs(300),
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// 50 small files in two directories, and a small git repository.
    fn make_source(local: &Path) {
        for i in 0..50u64 {
            let dir = local
                .join("tree")
                .join(if i % 2 == 0 { "a" } else { "b/c" });
            fs::create_dir_all(&dir).unwrap();
            fs::write(
                dir.join(format!("f{i}.bin")),
                content(512 + (i * 1337) % 60_000, i),
            )
            .unwrap();
        }
        let (ok, out) = sh(
            "git init -q repo && cd repo && cp -r ../tree/a . && git add -A \
             && git -c user.name=t -c user.email=t@t commit -qm one \
             && cp -r ../tree/b . && git add -A \
             && git -c user.name=t -c user.email=t@t commit -qm two",
            local,
        );
        assert!(ok, "making the repository: {out}");
    }

    /// Every step a program takes; the first failure's output, if any.
    fn programs(m: &Mounted, local: &Path, root: &Path) -> Result<(), String> {
        let target = m.path().display().to_string();
        let steps = [
            format!("cp -r tree {target}/cp && diff -r tree {}/cp", root.display()),
            format!("rsync -a tree/ {target}/rsync/ && diff -r tree {}/rsync", root.display()),
            format!(
                "rsync -ai --stats tree/ {target}/rsync/ | grep -q 'Number of regular files transferred: 0'"
            ),
            format!(
                "tar -C tree -cf tree.tar . && mkdir {target}/tar && tar -C {target}/tar -xf tree.tar \
                 && diff -r tree {}/tar",
                root.display()
            ),
            format!(
                "git clone -q --no-hardlinks file://{}/repo {target}/clone && git -C {target}/clone fsck \
                 && diff -r repo/a {}/clone/a",
                local.display(),
                root.display()
            ),
            format!("for i in 1 2 3; do diff -r tree {target}/cp; done"),
            format!(
                "mkdir {target}/d && mv {target}/cp/a/f0.bin {target}/d/g && cmp tree/a/f0.bin {}/d/g \
                 && rm -r {target}/d && test ! -e {}/d",
                root.display(),
                root.display()
            ),
        ];
        for step in steps {
            let (ok, out) = sh(&step, local);
            if !ok {
                return Err(format!("{step}\n{out}"));
            }
        }
        Ok(())
    }

    /// Random 4 KiB reads and a whole 64 MiB file by SHA-256.
    fn big_reads(m: &Mounted, root: &Path) -> Result<(), String> {
        let data = content(64 << 20, 7);
        let file = fs::File::open(m.join("big.bin")).map_err(|e| e.to_string())?;
        for k in 0..10u64 {
            let offset = (k * 6_700_417) % ((64 << 20) - 4096);
            let read =
                read_at_most(&file, offset, 4096).map_err(|e| format!("read at {offset}: {e}"))?;
            if read[..] != data[offset as usize..offset as usize + 4096] {
                return Err(format!("wrong bytes at {offset}"));
            }
        }
        drop(file);
        let (ok, out) = sh(
            &format!(
                "test \"$(sha256sum < {}/big.bin)\" = \"$(sha256sum < {})\"",
                m.path().display(),
                root.join("big.bin").display()
            ),
            root,
        );
        if ok {
            Ok(())
        } else {
            Err(format!("SHA-256 of big.bin differs: {out}"))
        }
    }

    #[test]
    fn programs_work_exactly_on_a_reordering_server_in_auto() {
        let dir = scratch_dir("reorder");
        let (root, local) = (dir.join("server"), dir.join("local"));
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&local).unwrap();
        make_source(&local);
        // On the server before the mount lists its root.
        fs::write(root.join("big.bin"), content(64 << 20, 7)).unwrap();
        let server = async_server(&root);
        server.set_break_after_abort(true);
        let m = mount(&server, "auto");
        let result = programs(&m, &local, &root).and_then(|()| big_reads(&m, &root));
        let stats = sh(
            &format!(
                "{} stats {}",
                env!("CARGO_BIN_EXE_ftpsfs"),
                m.path().display()
            ),
            &local,
        );
        assert!(result.is_ok(), "{}\nlog:\n{}", result.unwrap_err(), m.log());
        assert!(
            stats.1.contains(
                "commands: one command at a time (pipelining=auto: it answered NOOP, PWD, NOOP"
            ),
            "{}",
            stats.1
        );
        drop(m);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn check_says_it_sends_one_command_at_a_time_and_why() {
        let dir = scratch_dir("reorder-check");
        let server = async_server(&dir);
        let out = run(
            Command::new(env!("CARGO_BIN_EXE_ftpsfs"))
                .arg("check")
                .arg("--ca-file")
                .arg(&env().ca)
                .arg(format!("ftp://{}@127.0.0.1:{}/", env().user, server.port()))
                .env("FTPSFS_PASSWORD", &env().password)
                .env_remove("RUST_LOG"),
            Duration::from_secs(60),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(
                "commands: one command at a time (pipelining=auto: it answered NOOP, PWD, NOOP sent together with 257 200 200)"
            ),
            "{stdout}"
        );
        assert!(
            stdout.contains("OK: 5 of 5 data connections resumed"),
            "{stdout}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    /// A path that does not exist fails the mount with one line on every server, also on
    /// vsftpd, which lists a missing directory as an empty one.
    #[test]
    fn a_missing_remote_path_fails_the_mount_on_every_server() {
        for server in [
            Server::Vsftpd,
            Server::Proftpd,
            Server::PureFtpd,
            Server::Strict,
        ] {
            MountConfig::new(server, Tls::V13)
                .remote_dir("no-such-directory")
                .mount_failure(Duration::from_secs(20))
                .assert_one_line(&["no-such-directory", "550"]);
        }
    }

    #[test]
    fn the_same_programs_fail_on_it_with_pipelining_on() {
        let dir = scratch_dir("reorder-on");
        let (root, local) = (dir.join("server"), dir.join("local"));
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&local).unwrap();
        make_source(&local);
        let server = async_server(&root);
        let m = mount(&server, "on");
        let result = programs(&m, &local, &root);
        assert!(result.is_err(), "the server's disorder went unnoticed");
        drop(m);
        let _ = fs::remove_dir_all(&dir);
    }
}
