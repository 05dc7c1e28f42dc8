//! What desktop file browsers do, through GIO (the library GNOME Files, Thunar and
//! PCManFM use): copy in and out, save (a temporary `.goutputstream-XXXXXX` renamed over
//! the target), rename, move, mkdir, info, remove and trash. Each step is checked on the
//! server's disk, and nothing is left behind there.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::mount::{run, run_ok, scratch_dir, MountConfig, Mounted, ServerScratch};
use common::{Server, Tls};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A `gio` command with a fresh home and no gvfs or D-Bus daemons.
fn gio_command(home: &Path) -> Command {
    let mut command = Command::new("gio");
    command
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("GIO_USE_VFS", "local")
        .env("GIO_USE_VOLUME_MONITOR", "unix")
        // "disabled:" rather than unset: GLib would start a bus of its own otherwise.
        .env("DBUS_SESSION_BUS_ADDRESS", "disabled:");
    command
}

/// Runs `gio ARGS`, and panics unless it succeeds.
fn gio(home: &Path, args: &[&str]) -> Output {
    run_ok(
        &format!("gio {args:?}"),
        gio_command(home).args(args),
        Duration::from_secs(60),
    )
}

/// `gio save DEST` with `content` on its standard input.
fn gio_save(home: &Path, dest: &Path, content: &[u8]) {
    let mut child = gio_command(home)
        .arg("save")
        .arg(dest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), content).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "gio save: {}", text(&out.stderr));
}

/// Names in a directory of the server's disk, hidden ones included, sorted.
fn server_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn gio_operations_work_and_leave_nothing_behind() {
    let scratch = ServerScratch::new();
    let home = scratch_dir("gio-home");
    let m = Mounted::with(MountConfig::new(Server::Vsftpd, Tls::V13).remote_dir(&scratch.name));
    let server = |relative: &str| scratch.dir.join(relative);
    let mount = |relative: &str| m.join(relative);
    let path = |p: &Path| p.to_str().unwrap().to_string();

    gio(&home, &["mkdir", &path(&mount("docs"))]);
    assert!(server("docs").is_dir(), "gio mkdir");

    let local = home.join("report.txt");
    let first: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(&local, &first).unwrap();
    gio(
        &home,
        &["copy", &path(&local), &path(&mount("docs/report.txt"))],
    );
    assert_eq!(
        fs::read(server("docs/report.txt")).unwrap(),
        first,
        "gio copy in"
    );

    let back = home.join("back.txt");
    gio(
        &home,
        &["copy", &path(&mount("docs/report.txt")), &path(&back)],
    );
    assert_eq!(fs::read(&back).unwrap(), first, "gio copy out");

    // Saving over an existing file: GIO writes .goutputstream-XXXXXX and renames it over.
    let second = b"saved by gio, replacing the report\n".repeat(100);
    gio_save(&home, &mount("docs/report.txt"), &second);
    assert_eq!(
        fs::read(server("docs/report.txt")).unwrap(),
        second,
        "gio save"
    );
    // And a new file.
    gio_save(&home, &mount("docs/new.txt"), b"a new file\n");
    assert_eq!(fs::read(server("docs/new.txt")).unwrap(), b"a new file\n");

    gio(
        &home,
        &["rename", &path(&mount("docs/report.txt")), "renamed.txt"],
    );
    assert_eq!(
        fs::read(server("docs/renamed.txt")).unwrap(),
        second,
        "gio rename"
    );
    assert!(!server("docs/report.txt").exists());

    gio(&home, &["mkdir", &path(&mount("docs/sub"))]);
    gio(
        &home,
        &[
            "move",
            &path(&mount("docs/renamed.txt")),
            &path(&mount("docs/sub/moved.txt")),
        ],
    );
    assert_eq!(
        fs::read(server("docs/sub/moved.txt")).unwrap(),
        second,
        "gio move"
    );
    assert!(!server("docs/renamed.txt").exists());

    let info = text(&gio(&home, &["info", &path(&mount("docs/sub/moved.txt"))]).stdout);
    assert!(
        info.contains(&format!("size:  {}", second.len())),
        "gio info:\n{info}"
    );
    assert!(info.contains("type: regular"), "gio info:\n{info}");

    gio(&home, &["remove", &path(&mount("docs/new.txt"))]);
    assert!(!server("docs/new.txt").exists(), "gio remove");

    // Trash: the file goes to .Trash-UID at the mount's top, created if missing, with a
    // .trashinfo that says where it came from; moving it back restores it.
    let uid = unsafe { libc::geteuid() };
    let trash = format!(".Trash-{uid}");
    assert!(!server(&trash).exists());
    gio(&home, &["trash", &path(&mount("docs/sub/moved.txt"))]);
    assert!(
        !server("docs/sub/moved.txt").exists(),
        "gio trash left the file"
    );
    assert_eq!(
        fs::read(server(&format!("{trash}/files/moved.txt"))).unwrap(),
        second,
        "the trashed file"
    );
    let trashinfo = fs::read_to_string(server(&format!("{trash}/info/moved.txt.trashinfo")))
        .expect("the .trashinfo");
    assert!(trashinfo.starts_with("[Trash Info]\n"), "{trashinfo}");
    let original = trashinfo
        .lines()
        .find_map(|line| line.strip_prefix("Path="))
        .expect("Path= in the .trashinfo");
    assert_eq!(original, "docs/sub/moved.txt", "{trashinfo}");
    // Restore, as a file browser does: move it back to Path, drop the .trashinfo.
    gio(
        &home,
        &[
            "move",
            &path(&mount(&format!("{trash}/files/moved.txt"))),
            &path(&mount(original)),
        ],
    );
    gio(
        &home,
        &[
            "remove",
            &path(&mount(&format!("{trash}/info/moved.txt.trashinfo"))),
        ],
    );
    assert_eq!(
        fs::read(server("docs/sub/moved.txt")).unwrap(),
        second,
        "restored"
    );

    // Nothing behind: no temporary upload, no .goutputstream, nothing in the trash.
    for dir in [
        "",
        "docs",
        "docs/sub",
        &format!("{trash}/files"),
        &format!("{trash}/info"),
    ] {
        let leftovers: Vec<String> = server_names(&server(dir))
            .into_iter()
            .filter(|name| name.starts_with(".ftpsfs-") || name.starts_with(".goutputstream"))
            .collect();
        assert!(leftovers.is_empty(), "left in {dir:?}: {leftovers:?}");
    }
    assert!(server_names(&server(&format!("{trash}/files"))).is_empty());
    assert!(server_names(&server(&format!("{trash}/info"))).is_empty());
    drop(m);
    let _ = fs::remove_dir_all(&home);
}

/// A display of our own: Xvfb on a free display number, stopped (by its PID) on drop.
struct Display {
    number: u32,
    xvfb: std::process::Child,
}

impl Display {
    fn start() -> Display {
        let base = 100 + std::process::id() % 400;
        let number = (base..base + 50)
            .find(|n| !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists())
            .expect("a free X display number");
        let xvfb = Command::new("Xvfb")
            .arg(format!(":{number}"))
            .args(["-screen", "0", "1024x768x24", "-nolisten", "tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb (scripts/install-deps.sh installs it)");
        let mut display = Display { number, xvfb };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !Path::new(&format!("/tmp/.X11-unix/X{number}")).exists() {
            if let Ok(Some(status)) = display.xvfb.try_wait() {
                panic!("Xvfb :{number} exited at start: {status}");
            }
            assert!(std::time::Instant::now() < deadline, "Xvfb did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        display
    }

    fn name(&self) -> String {
        format!(":{}", self.number)
    }

    /// The whole screen, as `xwd` gives it.
    fn screenshot(&self) -> Screenshot {
        let out = run(
            Command::new("xwd").args(["-root", "-silent", "-display", &self.name()]),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "xwd: {}", text(&out.stderr));
        Screenshot::from_xwd(&out.stdout)
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        let _ = self.xvfb.kill();
        let _ = self.xvfb.wait();
    }
}

/// A process this test started, killed (by its PID) when the test ends, however it ends.
struct Started(std::process::Child);

impl Started {
    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An RGB image.
struct Screenshot {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Screenshot {
    /// Reads a ZPixmap XWD dump of a 24- or 32-bit visual (what Xvfb gives).
    fn from_xwd(data: &[u8]) -> Screenshot {
        let field = |i: usize| u32::from_be_bytes(data[i * 4..i * 4 + 4].try_into().unwrap());
        let header_size = field(0) as usize;
        assert_eq!(field(1), 7, "not an XWD file");
        assert_eq!(field(2), 2, "not a ZPixmap");
        let (width, height) = (field(4) as usize, field(5) as usize);
        let lsb_first = field(7) == 0;
        let bits_per_pixel = field(11);
        let bytes_per_line = field(12) as usize;
        let masks = [field(14), field(15), field(16)];
        let colors = field(19) as usize;
        assert_eq!(bits_per_pixel, 32, "unexpected XWD pixel size");
        let pixels = &data[header_size + colors * 12..];
        let mut rgb = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                let at = y * bytes_per_line + x * 4;
                let bytes: [u8; 4] = pixels[at..at + 4].try_into().unwrap();
                let pixel = if lsb_first {
                    u32::from_le_bytes(bytes)
                } else {
                    u32::from_be_bytes(bytes)
                };
                for mask in masks {
                    rgb.push(((pixel & mask) >> mask.trailing_zeros()) as u8);
                }
            }
        }
        Screenshot { width, height, rgb }
    }

    /// How many different colours it shows: a blank screen has one.
    fn distinct_colors(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        for pixel in self.rgb.chunks(3) {
            seen.insert([pixel[0], pixel[1], pixel[2]]);
        }
        seen.len()
    }

    /// The image as a PNG (uncompressed deflate: no image crate needed for an artifact).
    fn to_png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity((self.width * 3 + 1) * self.height);
        for row in self.rgb.chunks(self.width * 3) {
            raw.push(0); // filter: none
            raw.extend_from_slice(row);
        }
        let mut zlib = vec![0x78, 0x01];
        let mut blocks = raw.chunks(65_535).peekable();
        while let Some(block) = blocks.next() {
            zlib.push(u8::from(blocks.peek().is_none()));
            let len = block.len() as u16;
            zlib.extend_from_slice(&len.to_le_bytes());
            zlib.extend_from_slice(&(!len).to_le_bytes());
            zlib.extend_from_slice(block);
        }
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in &raw {
            a = (a + u32::from(byte)) % 65_521;
            b = (b + a) % 65_521;
        }
        zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
        let mut header = Vec::new();
        header.extend_from_slice(&(self.width as u32).to_be_bytes());
        header.extend_from_slice(&(self.height as u32).to_be_bytes());
        header.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, body) in [(b"IHDR", header), (b"IDAT", zlib), (b"IEND", Vec::new())] {
            png.extend_from_slice(&(body.len() as u32).to_be_bytes());
            let mut chunk = kind.to_vec();
            chunk.extend_from_slice(&body);
            png.extend_from_slice(&chunk);
            png.extend_from_slice(&crc32(&chunk).to_be_bytes());
        }
        png
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Polls `done` every 100 ms for up to `limit`.
fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the server has seen no new command for `quiet`.
fn wait_until_quiet(server: &common::strict_server::StrictServer, quiet: Duration) {
    let mut last = server.commands().len();
    let mut since = std::time::Instant::now();
    wait_for("the server to go quiet", Duration::from_secs(60), || {
        let now = server.commands().len();
        if now != last {
            last = now;
            since = std::time::Instant::now();
        }
        since.elapsed() >= quiet
    });
}

/// PCManFM, the LXDE file manager (on GIO), opens a 5,000-file directory on the mount
/// under Xvfb and shows it. Browsing it costs one listing and no command per file; files
/// whose type only their content tells are sniffed with a small ranged read, never read
/// whole. A screenshot of the window is kept as an artifact.
#[test]
fn a_file_manager_shows_a_5000_file_directory_with_one_listing() {
    let root = scratch_dir("file-manager");
    let served = root.join("served");
    fs::create_dir_all(served.join("big")).unwrap();
    fs::create_dir_all(served.join("mixed")).unwrap();
    for i in 0..5000 {
        fs::write(
            served.join(format!("big/note-{i:04}.txt")),
            format!("note {i}\n"),
        )
        .unwrap();
    }
    const SNIFFED: usize = 5;
    const SNIFFED_SIZE: usize = 4 << 20;
    for i in 0..SNIFFED {
        // No extension a type can be guessed from: file browsers read the first bytes.
        let content: Vec<u8> = (0..SNIFFED_SIZE)
            .map(|j| ((j * 7 + i) % 256) as u8)
            .collect();
        fs::write(served.join(format!("mixed/blob-{i}")), content).unwrap();
    }
    let server = common::strict_server_for(&served);
    let m = Mounted::with(MountConfig::new(Server::External, Tls::V13).port(server.port()));
    let display = Display::start();
    let home = root.join("home");
    let runtime = root.join("run");
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&runtime).unwrap();
    fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let pcmanfm = |dir: &Path| {
        let child = Command::new("pcmanfm")
            .arg(dir)
            .env("DISPLAY", display.name())
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("NO_AT_BRIDGE", "1")
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pcmanfm (scripts/install-deps.sh installs it)");
        Started(child)
    };
    let window_shown = |title: &str| {
        let out = run(
            Command::new("xdotool")
                .args(["search", "--onlyvisible", "--name", &format!("^{title}$")])
                .env("DISPLAY", display.name()),
            Duration::from_secs(10),
        );
        out.status.success() && !out.stdout.is_empty()
    };
    let stats = || {
        let out = Command::new(env!("CARGO_BIN_EXE_ftpsfs"))
            .args(["stats", "--json"])
            .arg(m.path())
            .output()
            .unwrap();
        text(&out.stdout)
    };
    let number_after = |json: &str, key: &str| -> u64 {
        let at = json.find(&format!("\"{key}\":")).unwrap() + key.len() + 3;
        json[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };

    wait_until_quiet(&server, Duration::from_millis(500));
    let before = server.commands().len();
    let mut browser = pcmanfm(&m.join("big"));
    wait_for(
        "the PCManFM window on big/",
        Duration::from_secs(60),
        || window_shown("big"),
    );
    wait_until_quiet(&server, Duration::from_secs(3));
    assert!(browser.alive(), "PCManFM died");
    let shot = display.screenshot();
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("pcmanfm-5000-files.png");
    fs::write(&png, shot.to_png()).unwrap();
    println!(
        "ARTIFACT screenshot of PCManFM on the 5,000-file directory: {}",
        png.display()
    );
    let colors = shot.distinct_colors();
    assert!(
        colors >= 16,
        "a blank screen ({colors} colours): {}",
        png.display()
    );

    let browse: Vec<String> = server.commands()[before..].to_vec();
    let is_listing =
        |c: &&String| c.starts_with("MLSD") || c.starts_with("LIST") || c.starts_with("NLST");
    // Other listings are ftpsfs's listing ahead of the sibling directories, once each.
    let listings = browse
        .iter()
        .filter(is_listing)
        .filter(|c| c.ends_with(" big"))
        .count();
    let per_file: Vec<&String> = browse.iter().filter(|c| c.contains("note-")).collect();
    println!(
        "COMMANDS browsing 5,000 files: {} in all, {listings} listing(s), {} naming a file: {:?}",
        browse.len(),
        per_file.len(),
        browse
    );
    assert_eq!(listings, 1, "listings of big/ while browsing: {browse:?}");
    let others = browse.iter().filter(is_listing).count() - listings;
    assert!(others <= 2, "listings while browsing: {browse:?}");
    assert!(per_file.is_empty(), "commands per file: {per_file:?}");
    // Nor any other command: probes for .directory or .hidden are answered from the
    // listing.
    let others: Vec<&String> = browse
        .iter()
        .filter(|c| !(is_listing(c) || *c == "EPSV" || *c == "PASV"))
        .collect();
    assert!(others.is_empty(), "commands besides listings: {others:?}");

    // Content sniffing: a small range of each file, never all of it.
    let fetched_before = number_after(&stats(), "bytes_fetched");
    let before = server.commands().len();
    let second = pcmanfm(&m.join("mixed"));
    wait_for(
        "the PCManFM window on mixed/",
        Duration::from_secs(60),
        || window_shown("mixed"),
    );
    wait_until_quiet(&server, Duration::from_secs(3));
    let fetched = number_after(&stats(), "bytes_fetched") - fetched_before;
    let sniffs: Vec<String> = server.commands()[before..]
        .iter()
        .filter(|c| c.starts_with("RETR"))
        .cloned()
        .collect();
    println!(
        "SNIFF {SNIFFED} files of {SNIFFED_SIZE} bytes: {} RETR, {fetched} bytes downloaded",
        sniffs.len()
    );
    assert!(
        fetched <= (SNIFFED * 256 * 1024) as u64,
        "{fetched} bytes downloaded to sniff {SNIFFED} files"
    );
    assert!(browser.alive(), "PCManFM died");
    drop(second);
    drop(browser);
    drop(display);
    drop(m);
    drop(server);
    let _ = fs::remove_dir_all(&root);
}
