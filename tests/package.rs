//! The Debian package as a user gets it: built by `scripts/package-deb.sh`, installed with
//! `dpkg -i`, mounted with `mount -t fuse.ftpsfs` and from an fstab line, removed with
//! `dpkg -r`. Needs root and a Debian machine, as the whole suite does.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::env;
use common::mount::{force_unmount, mounted_fstype, run, run_ok, scratch_dir};

const STEP: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `command`, and panics with its output unless it succeeds.
fn ok(what: &str, command: &mut Command) -> Output {
    run_ok(what, command, STEP)
}

/// Removes the package (and any mount left) however the test ends.
struct Installed<'a> {
    mountpoint: &'a Path,
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        if mounted_fstype(self.mountpoint).is_some() {
            force_unmount(self.mountpoint);
        }
        // Also after a dpkg -i that failed half way.
        let _ = run(Command::new("dpkg").args(["--purge", "ftpsfs"]), STEP);
    }
}

#[test]
fn the_debian_package_installs_mounts_and_removes() {
    // Never replace an ftpsfs someone installed on this machine.
    assert!(
        !Path::new("/var/lib/dpkg/info/ftpsfs.list").exists(),
        "an ftpsfs package is installed already; remove it to run this test"
    );
    let dir = scratch_dir("package");
    let out = ok(
        "scripts/package-deb.sh",
        Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/package-deb.sh"
            ))
            .arg(env!("CARGO_BIN_EXE_ftpsfs"))
            .arg(dir.join("out")),
    );
    let deb = text(&out.stdout).trim().to_string();
    assert!(deb.ends_with(".deb"), "no package path in {deb:?}");

    let mountpoint = dir.join("mnt");
    fs::create_dir_all(&mountpoint).unwrap();
    let _installed = Installed {
        mountpoint: &mountpoint,
    };
    ok("dpkg -i", Command::new("dpkg").args(["-i", &deb]));

    let version = ok(
        "ftpsfs --version",
        Command::new("/usr/bin/ftpsfs").arg("--version"),
    );
    assert_eq!(
        text(&version.stdout).trim(),
        format!("ftpsfs {}", env!("CARGO_PKG_VERSION"))
    );
    let man = ok(
        "the man page",
        Command::new("gzip").args(["-dc", "/usr/share/man/man1/ftpsfs.1.gz"]),
    );
    let man = text(&man.stdout);
    assert!(man.contains(".TH ftpsfs 1"), "not a man page:\n{man}");
    assert!(man.contains("password\\-file"), "options missing:\n{man}");
    ok(
        "bash completion",
        Command::new("bash").args([
            "-c",
            ". /usr/share/bash-completion/completions/ftpsfs && complete -p ftpsfs",
        ]),
    );
    let zsh = fs::read_to_string("/usr/share/zsh/vendor-completions/_ftpsfs").unwrap();
    assert!(zsh.starts_with("#compdef ftpsfs"), "zsh completion");
    let fish = fs::read_to_string("/usr/share/fish/vendor_completions.d/ftpsfs.fish").unwrap();
    assert!(fish.contains("complete -c ftpsfs"), "fish completion");
    assert!(Path::new("/usr/share/doc/ftpsfs/copyright").exists());

    let url = format!(
        "ftp://{}@127.0.0.1:{}/",
        env().user,
        env().port("VSFTPD_PORT")
    );
    let options = format!(
        "ca_file={},password_file={}",
        env().ca.display(),
        env().path("FTPSFS_TEST_PASSWORD_FILE").display()
    );
    // mount(8) → mount.fuse3 → the installed ftpsfs, found on PATH.
    let clean_path = "/usr/sbin:/usr/bin:/sbin:/bin";
    ok(
        "mount -t fuse.ftpsfs",
        Command::new("mount")
            .env("PATH", clean_path)
            .args(["-t", "fuse.ftpsfs", &url])
            .arg(&mountpoint)
            .args(["-o", &options]),
    );
    // Root mounts with mount(2), which fuser does with the type "fuse" (README, *Filesystem
    // type*); fusermount3 would record "fuse.ftpsfs".
    let fstype = mounted_fstype(&mountpoint);
    assert!(
        matches!(fstype.as_deref(), Some("fuse" | "fuse.ftpsfs")),
        "mounted as {fstype:?}"
    );
    assert!(fs::read_dir(&mountpoint)
        .unwrap()
        .any(|e| e.unwrap().file_name() == "dir1"));
    ok("umount", Command::new("umount").arg(&mountpoint));

    // An fstab line, as the README shows it (in a file of its own, not /etc/fstab).
    let fstab = dir.join("fstab");
    fs::write(
        &fstab,
        format!(
            "{url} {} fuse.ftpsfs _netdev,noauto,{options} 0 0\n",
            mountpoint.display()
        ),
    )
    .unwrap();
    ok(
        "mount from the fstab line",
        Command::new("mount")
            .env("PATH", clean_path)
            .arg("-T")
            .arg(&fstab)
            .arg(&mountpoint),
    );
    assert!(fs::read_dir(&mountpoint)
        .unwrap()
        .any(|e| e.unwrap().file_name() == "dir1"));
    ok("umount", Command::new("umount").arg(&mountpoint));
    assert_eq!(mounted_fstype(&mountpoint), None);

    ok("dpkg -r", Command::new("dpkg").args(["-r", "ftpsfs"]));
    assert!(
        !Path::new("/usr/bin/ftpsfs").exists(),
        "dpkg -r left the binary"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// The systemd units that packaging/systemd-units.md documents are valid units:
/// `systemd-analyze verify` accepts them with no warning (their names match `Where=`,
/// every key is known). Mounting them needs systemd as PID 1, which CI does not have.
#[test]
fn the_documented_systemd_units_verify() {
    let doc = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/systemd-units.md"
    ))
    .unwrap();
    let dir = scratch_dir("systemd-units");
    let mut units = Vec::new();
    for block in doc.split("`/etc/systemd/system/").skip(1) {
        let (name, rest) = block.split_once("`:").expect("a unit name");
        let body = rest
            .split("```\n")
            .nth(1)
            .expect("the unit's text in a code block");
        let path = dir.join(name);
        fs::write(&path, body).unwrap();
        units.push(path);
    }
    assert_eq!(units.len(), 2, "the .mount and .automount units");
    let out = run(
        Command::new("systemd-analyze").arg("verify").args(&units),
        STEP,
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    let _ = fs::remove_dir_all(&dir);
}
