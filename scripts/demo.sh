#!/usr/bin/env bash
# Try ftpsfs in one command on a fresh Debian machine (as root):
#
#   scripts/demo.sh [MOUNTPOINT]        install, build, start a demo server, mount it
#   scripts/demo.sh stop [MOUNTPOINT]   unmount and stop the demo servers
#
# The demo server is the test suite's vsftpd (scripts/servers.sh): it listens on
# 127.0.0.1 only, requires TLS and refuses data connections that do not resume the
# control connection's TLS session, which is the case ftpsfs exists for. The mount is
# read-write; the demo copies a folder onto the server through it and compares it on
# the server's side, then shows `ftpsfs check` with every data connection resumed, and
# the same server refusing one that does not resume. MOUNTPOINT defaults to
# /tmp/ftpsfs-demo. scripts/test.sh runs it, so it cannot go stale.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The same state dir as servers.sh: it holds servers.env, the CA and the password.
STATE=${FTPSFS_TEST_DIR:-/var/tmp/ftpsfs-test}
# Remembers where `start` mounted, so `stop` finds a custom mountpoint by itself.
MOUNT_RECORD=$STATE/demo-mountpoint
BIN=$ROOT/target/release/ftpsfs

die() {
    echo "demo.sh: $*" >&2
    exit 1
}

log() { echo "demo.sh: $*"; }

# Whether something is mounted at $1. Reads mountinfo instead of stat()ing the path,
# which fails with "Transport endpoint is not connected" on a crashed FUSE mount.
is_mounted() {
    awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

unmount() {
    local mnt=$1
    is_mounted "$mnt" || return 0
    # fusermount3 -u ends the ftpsfs process too; umount -l is the fallback for a
    # busy mount (a shell cd'ed into it) or a process that is already gone.
    if ! fusermount3 -u "$mnt" 2>/dev/null; then
        log "$mnt is busy or stale; detaching it lazily"
        umount -l "$mnt"
    fi
    log "unmounted $mnt"
}

cmd_stop() {
    local mnt=${1:-}
    if [[ -z $mnt && -s $MOUNT_RECORD ]]; then mnt=$(<"$MOUNT_RECORD"); fi
    mnt=$(realpath -m "${mnt:-/tmp/ftpsfs-demo}")
    unmount "$mnt"
    rm -f "$MOUNT_RECORD"
    # The demo's own copy leaves the test data as servers.sh made it.
    if [[ -s $STATE/servers.env ]]; then
        # shellcheck source=/dev/null
        source "$STATE/servers.env"
        rm -rf "${FTPSFS_TEST_DATA:?}/demo-docs"
    fi
    bash "$ROOT/scripts/servers.sh" stop
}

cmd_start() {
    # mountinfo holds canonical absolute paths.
    local mnt
    mnt=$(realpath -m "${1:-/tmp/ftpsfs-demo}")

    [[ $(id -u) -eq 0 ]] || die "run as root: it installs packages and starts FTP servers (sudo $0)"
    command -v cargo >/dev/null ||
        die "cargo not found: install Rust 1.85 or newer (https://rustup.rs: curl -sSf https://sh.rustup.rs | sh), then rerun"

    log "installing dependencies (apt; skipped when already there)"
    bash "$ROOT/scripts/install-deps.sh"

    log "building the release binary (a few minutes the first time)"
    (cd "$ROOT" && cargo build --release --locked)

    # servers.sh restarts the servers (new password each time), so a mount left from
    # an earlier run would point at a dead session: unmount it first.
    unmount "$mnt"
    log "starting the demo FTPS servers with sample data"
    bash "$ROOT/scripts/servers.sh" start

    # KEY=value lines written by servers.sh: port, user, CA, password file.
    # shellcheck source=/dev/null
    source "$STATE/servers.env"

    mkdir -p "$mnt"
    if [[ -n $(ls -A "$mnt") ]]; then
        die "$mnt is not empty; give an empty directory: $0 /path/to/empty/dir"
    fi
    local url="ftp://$FTPSFS_TEST_USER@127.0.0.1:$VSFTPD_PORT/"
    local options="ca_file=$FTPSFS_TEST_CA,password_file=$FTPSFS_TEST_PASSWORD_FILE"
    # A copy left by an earlier demo goes before the mount lists the directory.
    rm -rf "$FTPSFS_TEST_DATA/demo-docs"
    log "mounting $url at $mnt"
    # Without -f, ftpsfs returns once the mount is up and keeps serving it in the
    # background. The password comes from the 0600 file servers.sh wrote, so it is
    # never on a command line (where `ps` would show it). The demo CA is not in the
    # system trust store, hence ca_file. The log file is where the background process
    # reports problems, since it has no terminal.
    "$BIN" "$url" "$mnt" -o "$options,log_file=$STATE/logs/ftpsfs-demo.log"
    is_mounted "$mnt" || die "ftpsfs returned but nothing is mounted at $mnt; see $STATE/logs/ftpsfs-demo.log"
    echo "$mnt" >"$MOUNT_RECORD"
    echo
    echo "ftpsfs is mounted, read-write, at $mnt (vsftpd on 127.0.0.1:$VSFTPD_PORT, TLS session reuse required)"

    # What ftpsfs is for: writing through the mount, checked on the server's own disk.
    echo
    echo "\$ cp -r $ROOT/docs $mnt/demo-docs"
    cp -r "$ROOT/docs" "$mnt/demo-docs"
    if diff -r "$ROOT/docs" "$FTPSFS_TEST_DATA/demo-docs" >/dev/null; then
        echo "on the server's disk: identical to $ROOT/docs ($(find "$FTPSFS_TEST_DATA/demo-docs" -type f | wc -l) files)"
    else
        die "the copy on the server differs from $ROOT/docs"
    fi

    # Every data connection resumes its control connection's TLS session...
    echo
    echo "\$ ftpsfs check $url"
    "$BIN" check --ca-file "$FTPSFS_TEST_CA" --password-file "$FTPSFS_TEST_PASSWORD_FILE" "$url" |
        grep -E '^(control connection TLS|commands|OK):'
    # ...and the same server refuses one that does not.
    echo
    echo "\$ ftpsfs check --no-resume $url"
    if "$BIN" check --no-resume --ca-file "$FTPSFS_TEST_CA" \
        --password-file "$FTPSFS_TEST_PASSWORD_FILE" "$url" >/dev/null 2>"$STATE/demo-refused"; then
        die "the server accepted a data connection that did not resume"
    fi
    cat "$STATE/demo-refused"

    cat <<EOF

Things to try:
  # the sample files, hidden and UTF-8 names included
  ls -la $mnt
  # writes land whole or not at all; see them on the server's own disk
  rsync -a /etc/ssl/ $mnt/ssl/ && ls $FTPSFS_TEST_DATA/ssl
  # 64 MiB over TLS, checked against the server's own SHA256SUMS
  sha256sum $mnt/large.bin; grep ' large.bin\$' $mnt/SHA256SUMS
  # what the mount is doing, and what the background ftpsfs logged
  $BIN stats $mnt; cat $STATE/logs/ftpsfs-demo.log

Unmount only:                  fusermount3 -u $mnt
Unmount and stop the servers:  $0 stop
EOF
}

case ${1:-} in
stop)
    shift
    cmd_stop "$@"
    ;;
-h | --help)
    sed -n '2,10s/^# \{0,1\}//p' "$0"
    ;;
*) cmd_start "$@" ;;
esac
