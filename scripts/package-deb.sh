#!/usr/bin/env bash
# Builds the Debian package of ftpsfs: the binary, its man page, bash/zsh/fish
# completions and the docs, with dpkg-deb (no extra cargo tool to build first).
#
#   scripts/package-deb.sh [BINARY] [OUT_DIR]
#
# BINARY defaults to a fresh `cargo build --release --locked`; OUT_DIR to
# target/debian. Prints the path of the .deb it made.
set -euo pipefail
# Paths given are the caller's, resolved before moving to the source tree.
binary=${1:+$(realpath -m "$1")}
out_dir=${2:+$(realpath -m "$2")}
cd "$(dirname "$0")/.."
out_dir=${out_dir:-target/debian}
if [[ -z $binary ]]; then
    cargo build --release --locked >&2
    binary=target/release/ftpsfs
fi
[[ -x $binary ]] || { echo "package-deb.sh: $binary is not an executable" >&2; exit 2; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
root=$(mktemp -d "${TMPDIR:-/tmp}/ftpsfs-deb.XXXXXX")
trap 'rm -rf "$root"' EXIT

install -D -m 0755 "$binary" "$root/usr/bin/ftpsfs"
# A release binary carries debug line tables (profile.release debug = 1): not for the package.
if command -v strip >/dev/null; then strip --strip-debug "$root/usr/bin/ftpsfs"; fi

mkdir -p "$root/usr/share/man/man1"
"$root/usr/bin/ftpsfs" manpage | gzip -9n >"$root/usr/share/man/man1/ftpsfs.1.gz"
install -d "$root/usr/share/bash-completion/completions" \
    "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
"$root/usr/bin/ftpsfs" completions bash >"$root/usr/share/bash-completion/completions/ftpsfs"
"$root/usr/bin/ftpsfs" completions zsh >"$root/usr/share/zsh/vendor-completions/_ftpsfs"
"$root/usr/bin/ftpsfs" completions fish >"$root/usr/share/fish/vendor_completions.d/ftpsfs.fish"

doc=$root/usr/share/doc/ftpsfs
install -d "$doc"
install -m 0644 README.md "$doc/README.md"
install -m 0644 docs/SEMANTICS.md docs/TLS-RESUMPTION.md packaging/systemd-units.md "$doc/"
install -m 0644 packaging/copyright "$doc/copyright"
printf 'ftpsfs (%s) unstable; urgency=low\n\n  * Built from %s.\n\n -- ftpsfs developers <ftpsfs@localhost>  %s\n' \
    "$version" "$(git rev-parse --short HEAD 2>/dev/null || echo 'a source tree')" \
    "$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" |
    gzip -9n >"$doc/changelog.gz"

chmod 0755 "$root"
find "$root/usr" -type d -exec chmod 0755 {} +
installed_kib=$(du -sk "$root/usr" | cut -f1)
install -d "$root/DEBIAN"
cat >"$root/DEBIAN/control" <<CONTROL
Package: ftpsfs
Version: $version
Architecture: $arch
Maintainer: ftpsfs developers <ftpsfs@localhost>
Installed-Size: $installed_kib
Depends: fuse3, libc6
Section: utils
Priority: optional
Description: mount an FTPS server as a local folder (FUSE)
 ftpsfs mounts an FTP server over TLS (explicit or implicit FTPS) so that
 cp, rsync, tar, editors and file browsers work on it as on a local folder.
 Every data connection resumes the TLS session of its own control connection,
 as vsftpd, ProFTPD and FileZilla Server require. Mount with
 "mount -t fuse.ftpsfs ftps://user@host/ /mnt/ftp" or an fstab line.
CONTROL

mkdir -p "$out_dir"
deb="$out_dir/ftpsfs_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
echo "$deb"
