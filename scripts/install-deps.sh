#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine (run as root).
#
# vsftpd, proftpd-core and pure-ftpd each declare "Conflicts: ftp-server", so
# only ProFTPD is installed through apt; vsftpd and Pure-FTPd are unpacked
# with `dpkg -x` into $FTPSFS_PKG_DIR after their shared libraries are
# installed. policy-rc.d stops apt from starting any server on port 21.
set -euo pipefail

PKG_DIR="${FTPSFS_PKG_DIR:-/var/tmp/ftpsfs-pkgs}"
export DEBIAN_FRONTEND=noninteractive

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps.sh: must run as root (apt-get, /dev/fuse)" >&2
    exit 1
fi

need_apt=0
# iptables, ip, unshare/nsenter and setpriv: the fault tests (tests/faults.rs) cut the
# network inside a private namespace; tests/security.rs runs `ls` as another user.
# danted and tinyproxy: the SOCKS5 and HTTP CONNECT proxies of tests/proxies.rs.
# gio, Xvfb, pcmanfm, xwd and xdotool: tests/desktop.rs drives GIO and a real file
# manager on a virtual display; systemd-analyze checks the documented units.
for bin in /usr/sbin/proftpd /usr/bin/fusermount3 /usr/bin/openssl /usr/bin/pkg-config /usr/bin/rsync \
    /usr/sbin/iptables /usr/sbin/ip /usr/bin/unshare /usr/bin/nsenter /usr/bin/setpriv /usr/bin/script \
    /usr/bin/gio /usr/bin/Xvfb /usr/bin/pcmanfm /usr/bin/xwd /usr/bin/xdotool /usr/bin/dpkg-deb \
    /usr/bin/systemd-analyze /usr/sbin/danted /usr/bin/tinyproxy; do
    [[ -x $bin ]] || need_apt=1
done
[[ -f /usr/lib/proftpd/mod_tls.so ]] || need_apt=1
[[ -f /usr/include/openssl/ssl.h ]] || need_apt=1
[[ -x $PKG_DIR/vsftpd/usr/sbin/vsftpd && -x $PKG_DIR/pure-ftpd/usr/sbin/pure-ftpd ]] || need_apt=1

# pjdfstest (tests/pjdfstest.rs): the POSIX file system suite's Rust port, built once
# from crates.io into $PKG_DIR (not a dependency of ftpsfs), and the second user it
# switches to besides nobody.
PJDFSTEST_VERSION=0.2.2
if [[ ! -x $PKG_DIR/pjdfstest/bin/pjdfstest ]] ||
    [[ $("$PKG_DIR/pjdfstest/bin/pjdfstest" --version 2>/dev/null) != "pjdfstest $PJDFSTEST_VERSION" ]]; then
    cargo install --quiet --locked --version "$PJDFSTEST_VERSION" --root "$PKG_DIR/pjdfstest" pjdfstest
fi
getent group tests >/dev/null || groupadd --system tests
id tests >/dev/null 2>&1 || useradd --system --gid tests --no-create-home --shell /usr/sbin/nologin tests

if [[ $need_apt -eq 0 ]]; then
    echo "install-deps.sh: everything already installed"
    exit 0
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [[ $created_policy -eq 1 ]]; then rm -f "$policy"; fi; }
trap cleanup EXIT

apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    proftpd-core proftpd-mod-crypto \
    fuse3 openssl libssl-dev pkg-config ca-certificates curl iproute2 procps rsync \
    iptables util-linux bsdutils \
    libglib2.0-bin xvfb pcmanfm x11-apps xdotool systemd dante-server tinyproxy \
    libcap2 libpam0g libwrap0 libsodium23 libssl3 libpam-modules >/dev/null

mkdir -p "$PKG_DIR"
cd "$PKG_DIR"
for pkg in vsftpd pure-ftpd; do
    if [[ ! -d $pkg/usr/sbin ]]; then
        rm -f "${pkg}"_*.deb
        # _apt cannot write here; the download runs as root, which apt warns about.
        apt-get download -qq "$pkg" 2>&1 | grep -v "unsandboxed as root" || true
        ls "${pkg}"_*.deb >/dev/null
        rm -rf "$pkg"
        dpkg -x "${pkg}"_*.deb "$pkg"
    fi
done
echo "install-deps.sh: installed; vsftpd and pure-ftpd unpacked under $PKG_DIR"
