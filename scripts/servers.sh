#!/usr/bin/env bash
# Runs the FTPS servers that the integration tests talk to:
#
#   vsftpd           explicit TLS (AUTH TLS), active mode allowed  $VSFTPD_PORT
#   vsftpd-implicit  implicit TLS (FTPS)       $VSFTPD_IMPLICIT_PORT
#   proftpd          explicit TLS, mod_tls     $PROFTPD_PORT
#   proftpd-noover   the same with ProFTPD's stock AllowOverwrite off and TLS 1.3 only
#                                              $PROFTPD_NOOVER_PORT
#   pure-ftpd        explicit TLS              $PUREFTPD_PORT
#   vsftpd-mtls      vsftpd demanding a client certificate signed by the test CA
#                                              $VSFTPD_MTLS_PORT
#   proftpd-mtls     ProFTPD demanding one (TLSVerifyClient on)
#                                              $PROFTPD_MTLS_PORT
#
# and the proxies the proxy tests connect through (to any server above but
# Pure-FTPd, whose port each of them refuses):
#
#   socks            Dante, SOCKS5 without authentication  $SOCKS_PROXY_PORT
#   socks-auth       Dante, SOCKS5 with the test user's name and password
#                                              $SOCKS_AUTH_PROXY_PORT
#   http-proxy       tinyproxy, HTTP CONNECT               $HTTP_PROXY_PORT
#   http-proxy-auth  tinyproxy with Basic authentication   $HTTP_AUTH_PROXY_PORT
#
# Usage: scripts/servers.sh start|stop|status|restart
#
# Every server refuses plain-text logins and plain-text data connections,
# accepts TLS 1.2 and TLS 1.3, and listens on 127.0.0.1 only. After `start`,
# $STATE/servers.env holds KEY=value lines for the tests (ports, CA, user,
# password file, data dir). State dir: ${FTPSFS_TEST_DIR:-/var/tmp/ftpsfs-test}.
#
# Needs root (useradd, PAM, chroot) and scripts/install-deps.sh to have run.
set -euo pipefail

STATE=${FTPSFS_TEST_DIR:-/var/tmp/ftpsfs-test}
PKG_DIR=${FTPSFS_PKG_DIR:-/var/tmp/ftpsfs-pkgs}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/vsftpd-conf.sh
source "$SCRIPT_DIR/lib/vsftpd-conf.sh"
# shellcheck source=lib/proftpd-conf.sh
source "$SCRIPT_DIR/lib/proftpd-conf.sh"
# shellcheck source=lib/proxy-conf.sh
source "$SCRIPT_DIR/lib/proxy-conf.sh"

HOST=127.0.0.1
TEST_USER=ftpsfs-test
DATA=$STATE/data
CERTS=$STATE/certs
RUN=$STATE/run   # our pid files: the only processes `stop` will signal
LOGS=$STATE/logs
CONF=$STATE/conf
SRV=$STATE/srv   # pid/scoreboard files that the servers write themselves

VSFTPD_BIN=$PKG_DIR/vsftpd/usr/sbin/vsftpd
PUREFTPD_BIN=$PKG_DIR/pure-ftpd/usr/sbin/pure-ftpd
PROFTPD_BIN=/usr/sbin/proftpd
DANTED_BIN=/usr/sbin/danted
TINYPROXY_BIN=/usr/bin/tinyproxy

# Control ports in 21000-21999, passive ranges in 20000-20999: both below the
# kernel's ephemeral range (32768+), so neither side of a test connection can
# ever collide with a server port.
VSFTPD_PORT=21021
VSFTPD_IMPLICIT_PORT=21990
PROFTPD_PORT=21023
PROFTPD_NOOVER_PORT=21025
PUREFTPD_PORT=21024
VSFTPD_MTLS_PORT=21026
PROFTPD_MTLS_PORT=21027
VSFTPD_PASV=20000:20249
VSFTPD_IMPLICIT_PASV=20250:20499
PROFTPD_PASV=20500:20749
# Below the 20000-20999 block of the first four servers, still far from 32768+.
PROFTPD_NOOVER_PASV=19750:19999
PUREFTPD_PASV=20750:20999
VSFTPD_MTLS_PASV=19500:19749
PROFTPD_MTLS_PASV=19250:19499
SOCKS_PROXY_PORT=21080
SOCKS_AUTH_PROXY_PORT=21081
HTTP_PROXY_PORT=21082
HTTP_AUTH_PROXY_PORT=21083

# Parallel control connections in the tests (~10) plus leftovers from earlier
# tests that are still closing must not hit a connection limit.
MAX_CLIENTS=50

SERVERS=(vsftpd vsftpd-implicit proftpd proftpd-noover pure-ftpd vsftpd-mtls proftpd-mtls
    socks socks-auth http-proxy http-proxy-auth)

die() {
    echo "servers.sh: $*" >&2
    exit 1
}

log() { echo "servers.sh: $*"; }

server_bin() {
    case $1 in
    vsftpd | vsftpd-implicit | vsftpd-mtls) echo "$VSFTPD_BIN" ;;
    proftpd | proftpd-noover | proftpd-mtls) echo "$PROFTPD_BIN" ;;
    pure-ftpd) echo "$PUREFTPD_BIN" ;;
    socks | socks-auth) echo "$DANTED_BIN" ;;
    http-proxy | http-proxy-auth) echo "$TINYPROXY_BIN" ;;
    *) die "unknown server $1" ;;
    esac
}

server_port() {
    case $1 in
    vsftpd) echo "$VSFTPD_PORT" ;;
    vsftpd-implicit) echo "$VSFTPD_IMPLICIT_PORT" ;;
    proftpd) echo "$PROFTPD_PORT" ;;
    proftpd-noover) echo "$PROFTPD_NOOVER_PORT" ;;
    pure-ftpd) echo "$PUREFTPD_PORT" ;;
    vsftpd-mtls) echo "$VSFTPD_MTLS_PORT" ;;
    proftpd-mtls) echo "$PROFTPD_MTLS_PORT" ;;
    socks) echo "$SOCKS_PROXY_PORT" ;;
    socks-auth) echo "$SOCKS_AUTH_PROXY_PORT" ;;
    http-proxy) echo "$HTTP_PROXY_PORT" ;;
    http-proxy-auth) echo "$HTTP_AUTH_PROXY_PORT" ;;
    *) die "unknown server $1" ;;
    esac
}

# Prints the pid from NAME's pid file if that process is still alive AND is
# still the server binary: a stale pid file must never make us signal a
# process that merely reused the pid.
live_pid() {
    local pidfile=$RUN/$1.pid pid exe
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    [[ $exe == "$(server_bin "$1")" ]] || return 1
    echo "$pid"
}

# Session processes are forked by the listener and outlive it (vsftpd,
# Pure-FTPd); they were started by our server, so they are ours to end too.
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

# The servers get reparented to pid 1, which here reaps zombies only every
# few seconds, so `kill -0` alone would report an exited server as running.
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

stop_one() {
    local name=$1 pid pids p i alive
    if ! pid=$(live_pid "$name"); then
        rm -f "$RUN/$name.pid"
        return 0
    fi
    mapfile -t pids < <(echo "$pid"; descendants "$pid")
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        alive=0
        for p in "${pids[@]}"; do
            if running "$p"; then alive=1; fi
        done
        [[ $alive -eq 0 ]] && break
        sleep 0.1
    done
    for p in "${pids[@]}"; do
        if running "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
    done
    rm -f "$RUN/$name.pid"
    log "stopped $name (pid $pid)"
}

cmd_stop() {
    local name
    for name in "${SERVERS[@]}"; do stop_one "$name"; done
}

cmd_status() {
    local name pid rc=0
    for name in "${SERVERS[@]}"; do
        if pid=$(live_pid "$name"); then
            printf '%-16s running  pid %-7s port %s\n' "$name" "$pid" "$(server_port "$name")"
        else
            printf '%-16s stopped\n' "$name"
            rc=3
        fi
    done
    return $rc
}

check_prereqs() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (useradd, PAM, chroot)"
    [[ $STATE != *[[:space:]]* ]] || die "FTPSFS_TEST_DIR must not contain whitespace (servers.env is plain KEY=value)"
    local f
    for f in "$VSFTPD_BIN" "$PUREFTPD_BIN" "$PROFTPD_BIN" /usr/lib/proftpd/mod_tls.so \
        "$DANTED_BIN" "$TINYPROXY_BIN" \
        /usr/bin/openssl /usr/bin/curl /usr/sbin/useradd /usr/sbin/chpasswd; do
        [[ -e $f ]] || die "$f missing: run scripts/install-deps.sh first"
    done
}

# A real system user, because every server authenticates through PAM/shadow.
# The password changes on every start so a leaked one is worthless.
setup_user() {
    if ! getent passwd "$TEST_USER" >/dev/null; then
        # bash is in /etc/shells: vsftpd's PAM stack (pam_shells) and
        # ProFTPD's RequireValidShell both refuse users whose shell is not.
        useradd --no-create-home --home-dir "$DATA" --shell /bin/bash \
            --comment "ftpsfs integration tests" "$TEST_USER"
    elif [[ $(getent passwd "$TEST_USER" | cut -d: -f6) != "$DATA" ]]; then
        usermod --home "$DATA" "$TEST_USER"
    fi
    local password
    password=$(openssl rand -hex 16)
    echo "$TEST_USER:$password" | chpasswd
    (umask 077 && printf '%s\n' "$password" >"$STATE/password.tmp")
    mv -f "$STATE/password.tmp" "$STATE/password"
    chmod 0600 "$STATE/password"
}

SAMPLE_FILES=(SHA256SUMS huge.bin large.bin medium.bin small.txt empty.txt 'with space.txt'
    'ünïcödé-名前.txt' .hidden link-to-small dir1/dir2/dir3/deep.txt many/f0000.txt many/f2999.txt)

# Sample tree. Generating 324 MiB of random data and 3000 files takes a few
# seconds, so it is only redone when something is missing (a test may have
# deleted a file); SHA256SUMS is written last, so an interrupted run is
# completed next time. Random files of the right size are kept.
setup_data() {
    local f missing=0
    mkdir -p "$DATA"
    for f in "${SAMPLE_FILES[@]}"; do
        [[ -e $DATA/$f || -L $DATA/$f ]] || missing=1
    done
    [[ $missing -eq 1 ]] || return 0
    log "creating sample data in $DATA"
    (
        cd "$DATA"
        # huge.bin is for the mount tests' big reads (sequential, random offsets,
        # concurrent readers): as big as the mount's whole default block cache.
        [[ -f huge.bin && $(stat -c %s huge.bin) -eq $((256 << 20)) ]] ||
            head -c $((256 << 20)) /dev/urandom >huge.bin
        [[ -f large.bin && $(stat -c %s large.bin) -eq $((64 << 20)) ]] ||
            head -c $((64 << 20)) /dev/urandom >large.bin
        [[ -f medium.bin && $(stat -c %s medium.bin) -eq $((4 << 20)) ]] ||
            head -c $((4 << 20)) /dev/urandom >medium.bin
        printf 'hello ftpsfs\n' >small.txt
        : >empty.txt
        printf 'file name with a space\n' >'with space.txt'
        printf 'unicode file name\n' >'ünïcödé-名前.txt'
        printf 'dot file, shown only by LIST -a / MLSD\n' >.hidden
        ln -sfn small.txt link-to-small
        mkdir -p dir1/dir2/dir3
        printf 'deep\n' >dir1/dir2/dir3/deep.txt
        mkdir -p many
        local i
        for ((i = 0; i < 3000; i++)); do
            printf -v f 'many/f%04d.txt' "$i"
            printf '%d\n' "$i" >"$f"
        done
        # A fixed, old mtime makes LIST show the "Mon DD  YYYY" form (older
        # than six months) next to the "Mon DD HH:MM" form of fresh files,
        # and lets tests assert an exact mtime (MLSD modify=20200102030405).
        touch -h -d '2020-01-02 03:04:05 UTC' small.txt
        # The temp file lives outside the tree so it does not list itself.
        # .ftpsfs-scratch-* are the mount tests' short-lived files (tests/mount.rs),
        # not sample data.
        find . -path './.ftpsfs-scratch-*' -prune -o -type f ! -name SHA256SUMS -printf "%P\0" | LC_ALL=C sort -z |
            xargs -0 sha256sum >"$STATE/SHA256SUMS.tmp"
        mv "$STATE/SHA256SUMS.tmp" SHA256SUMS
    )
    chown -R -h "$TEST_USER:" "$DATA"
    find "$DATA" -type d -exec chmod 0755 {} +
    find "$DATA" -type f -exec chmod 0644 {} +
}

setup_pam() {
    # vsftpd takes its PAM service name from the config; a project-specific
    # copy of the deb's file avoids clashing with a real vsftpd install.
    install -m 0644 "$PKG_DIR/vsftpd/etc/pam.d/vsftpd" /etc/pam.d/ftpsfs-vsftpd
    # Pure-FTPd has its service name ("pure-ftpd") compiled in. The file
    # ships in pure-ftpd-common, which is not installed, so write the same
    # stack as vsftpd's, but only if nobody else put one there.
    if [[ ! -e /etc/pam.d/pure-ftpd ]]; then
        install -m 0644 "$PKG_DIR/vsftpd/etc/pam.d/vsftpd" /etc/pam.d/pure-ftpd
    fi
    # ProFTPD uses /etc/pam.d/proftpd from proftpd-core.
    [[ -e /etc/pam.d/proftpd ]] || die "/etc/pam.d/proftpd missing (proftpd-core not installed?)"
}

# write_vsftpd_conf NAME PORT PASV IMPLICIT(YES|NO) [mtls]
write_vsftpd_conf() {
    local name=$1 port=$2 pasv=$3 implicit=$4 mtls=${5:-}
    vsftpd_conf scripts/servers.sh "$HOST" "$port" "${pasv%:*}" "${pasv#*:}" "$implicit" YES \
        "$MAX_CLIENTS" "$STATE/vsftpd-empty" "$CERTS" "$LOGS/$name.log" >"$CONF/$name.conf"
    if [[ $name == vsftpd ]]; then
        # Active mode too (tests/active.rs); the others stay passive-only, as shipped.
        sed -i 's/^port_enable=NO$/port_enable=YES/' "$CONF/$name.conf"
        grep -q '^port_enable=YES$' "$CONF/$name.conf" || die "$name: port_enable not set"
    fi
    if [[ $mtls == mtls ]]; then
        # A client certificate signed by the test CA, on control and data connections.
        printf '%s\n' "require_cert=YES" "validate_cert=YES" "ca_certs_file=$CERTS/ca.pem" \
            >>"$CONF/$name.conf"
    fi
}

# write_proftpd_conf NAME PORT PASV OVERWRITE(on|off) TLS_PROTOCOLS [mtls]
write_proftpd_conf() {
    local name=$1 port=$2 pasv=$3 overwrite=$4 protocols=$5 mtls=${6:-}
    proftpd_conf scripts/servers.sh "$name" "$HOST" "$port" "${pasv%:*}" "${pasv#*:}" \
        "$overwrite" "$protocols" "$MAX_CLIENTS" "$SRV" "$LOGS" "$CERTS" >"$CONF/$name.conf"
    if [[ $mtls == mtls ]]; then
        sed -i "s|^\( *\)TLSVerifyClient .*|\1TLSVerifyClient on\n\1TLSCACertificateFile $CERTS/ca.pem|" \
            "$CONF/$name.conf"
        grep -q "TLSVerifyClient on" "$CONF/$name.conf" || die "$name: TLSVerifyClient not set"
    fi
}

# The proxies let through every server's control port and passive range but
# Pure-FTPd's: a port they refuse is what the refusal tests connect to.
write_proxy_confs() {
    local ports="$VSFTPD_PORT $VSFTPD_PASV $VSFTPD_IMPLICIT_PORT $VSFTPD_IMPLICIT_PASV"
    ports+=" $PROFTPD_PORT $PROFTPD_PASV $PROFTPD_NOOVER_PORT $PROFTPD_NOOVER_PASV"
    ports+=" $VSFTPD_MTLS_PORT $VSFTPD_MTLS_PASV $PROFTPD_MTLS_PORT $PROFTPD_MTLS_PASV"
    danted_conf scripts/servers.sh "$HOST" "$SOCKS_PROXY_PORT" none "$LOGS/socks.log" \
        "$PUREFTPD_PORT" >"$CONF/socks.conf"
    danted_conf scripts/servers.sh "$HOST" "$SOCKS_AUTH_PROXY_PORT" username \
        "$LOGS/socks-auth.log" "$PUREFTPD_PORT" >"$CONF/socks-auth.conf"
    tinyproxy_conf scripts/servers.sh "$HOST" "$HTTP_PROXY_PORT" "$LOGS/http-proxy.log" \
        "$ports" "" "" >"$CONF/http-proxy.conf"
    # It holds the password: the test user's, which changes at every start.
    (umask 077 && tinyproxy_conf scripts/servers.sh "$HOST" "$HTTP_AUTH_PROXY_PORT" \
        "$LOGS/http-proxy-auth.log" "$ports" "$TEST_USER" "$STATE/password" \
        >"$CONF/http-proxy-auth.conf")
}

start_bg() {
    local name=$1
    shift
    # setsid + all fds redirected: the servers must survive the calling shell
    # and must not hold its stdout open (callers wait for EOF on it).
    # vsftpd writes its fatal startup errors ("500 OOPS: ...") to fd 0, so
    # stdin is a log file rather than /dev/null.
    : >"$LOGS/$name.oops"
    setsid "$@" 0<>"$LOGS/$name.oops" >>"$LOGS/$name.stderr" 2>&1 &
    echo $! >"$RUN/$name.pid"
}

# Waits (10 s at most) until NAME listens, then logs in once over TLS and
# lists a directory: that proves TLS, PAM and the data channel all work.
wait_ready() {
    local name=$1 port pid scheme=ftp i out cert=()
    port=$(server_port "$name")
    pid=$(<"$RUN/$name.pid")
    [[ $name == vsftpd-implicit ]] && scheme=ftps
    [[ $name == *-mtls ]] && cert=(--cert "$CERTS/client.pem" --key "$CERTS/client.key")
    local target=$port via=()
    case $name in
    socks) via=(--proxy "socks5h://$HOST:$port") ;;
    socks-auth) via=(--proxy "socks5h://$HOST:$port" --proxy-user "$TEST_USER:$(<"$STATE/password")") ;;
    http-proxy) via=(--proxytunnel --proxy "http://$HOST:$port") ;;
    http-proxy-auth) via=(--proxytunnel --proxy "http://$HOST:$port" --proxy-user "$TEST_USER:$(<"$STATE/password")") ;;
    esac
    # A proxy is ready when a login and listing on vsftpd through it work.
    [[ ${#via[@]} -gt 0 ]] && target=$VSFTPD_PORT
    for ((i = 0; ; i++)); do
        if ! running "$pid"; then
            fail_server "$name" "exited during startup"
        fi
        if ss -Htln "sport = :$port" | grep -q "$HOST:$port"; then break; fi
        ((i < 100)) || fail_server "$name" "not listening on $HOST:$port after 10 s"
        sleep 0.1
    done
    if ! out=$(printf 'user = "%s:%s"\n' "$TEST_USER" "$(<"$STATE/password")" |
        curl -sS --config - --ssl-reqd --cacert "$CERTS/ca.pem" "${cert[@]}" "${via[@]}" --max-time 10 \
            --list-only "$scheme://$HOST:$target/dir1/" 2>&1) || [[ $out != *dir2* ]]; then
        fail_server "$name" "TLS login + listing failed: $out"
    fi
    log "$name ready on $HOST:$port (pid $pid)"
}

fail_server() {
    local name=$1 f
    echo "servers.sh: $name: $2" >&2
    # Leave nothing half-started behind.
    cmd_stop >&2
    for f in "$LOGS/$name".* "$LOGS/$name"-tls.log "$LOGS/$name.log"; do
        if [[ -s $f ]]; then
            echo "---- tail of $f ----" >&2
            tail -n 30 "$f" >&2
        fi
    done
    exit 1
}

check_port_free() {
    if ss -Htln "sport = :$2" | grep -q .; then
        die "port $2 (for $1) is taken by a process servers.sh did not start: $(ss -Htlnp "sport = :$2")"
    fi
}

write_env() {
    cat >"$STATE/servers.env.tmp" <<EOF
# Generated by scripts/servers.sh start; source it or parse KEY=value lines.
FTPSFS_TEST_HOST=$HOST
FTPSFS_TEST_DIR=$STATE
FTPSFS_TEST_CA=$CERTS/ca.pem
FTPSFS_TEST_USER=$TEST_USER
FTPSFS_TEST_PASSWORD_FILE=$STATE/password
FTPSFS_TEST_DATA=$DATA
VSFTPD_PORT=$VSFTPD_PORT
VSFTPD_IMPLICIT_PORT=$VSFTPD_IMPLICIT_PORT
PROFTPD_PORT=$PROFTPD_PORT
PROFTPD_NOOVER_PORT=$PROFTPD_NOOVER_PORT
PUREFTPD_PORT=$PUREFTPD_PORT
VSFTPD_MTLS_PORT=$VSFTPD_MTLS_PORT
PROFTPD_MTLS_PORT=$PROFTPD_MTLS_PORT
FTPSFS_TEST_CLIENT_CERT=$CERTS/client.pem
FTPSFS_TEST_CLIENT_KEY=$CERTS/client.key
FTPSFS_TEST_OTHER_CLIENT_CERT=$CERTS/other-client.pem
FTPSFS_TEST_OTHER_CLIENT_KEY=$CERTS/other-client.key
VSFTPD_PASV_RANGE=$VSFTPD_PASV
VSFTPD_IMPLICIT_PASV_RANGE=$VSFTPD_IMPLICIT_PASV
PROFTPD_PASV_RANGE=$PROFTPD_PASV
PROFTPD_NOOVER_PASV_RANGE=$PROFTPD_NOOVER_PASV
PUREFTPD_PASV_RANGE=$PUREFTPD_PASV
SOCKS_PROXY_PORT=$SOCKS_PROXY_PORT
SOCKS_AUTH_PROXY_PORT=$SOCKS_AUTH_PROXY_PORT
HTTP_PROXY_PORT=$HTTP_PROXY_PORT
HTTP_AUTH_PROXY_PORT=$HTTP_AUTH_PROXY_PORT
FTPSFS_TEST_PROXY_LOGS=$LOGS
EOF
    mv -f "$STATE/servers.env.tmp" "$STATE/servers.env"
}

cmd_start() {
    check_prereqs
    cmd_stop
    mkdir -p "$STATE" "$RUN" "$LOGS" "$CONF" "$SRV"
    chmod 0755 "$STATE"
    # Fresh logs per start: vsftpd logs every command, and the tests send
    # many, so appending forever would only bury the next failure.
    find "$LOGS" -type f -exec truncate -s 0 {} +
    # vsftpd insists on an empty, root-owned, non-writable directory.
    mkdir -p "$STATE/vsftpd-empty"
    chmod 0755 "$STATE/vsftpd-empty"

    local name
    for name in "${SERVERS[@]}"; do check_port_free "$name" "$(server_port "$name")"; done

    "$SCRIPT_DIR/gen-certs.sh" "$CERTS"
    setup_user
    setup_data
    setup_pam

    write_vsftpd_conf vsftpd "$VSFTPD_PORT" "$VSFTPD_PASV" NO
    write_vsftpd_conf vsftpd-implicit "$VSFTPD_IMPLICIT_PORT" "$VSFTPD_IMPLICIT_PASV" YES
    write_proftpd_conf proftpd "$PROFTPD_PORT" "$PROFTPD_PASV" on "TLSv1.2 TLSv1.3"
    write_proftpd_conf proftpd-noover "$PROFTPD_NOOVER_PORT" "$PROFTPD_NOOVER_PASV" off TLSv1.3
    write_vsftpd_conf vsftpd-mtls "$VSFTPD_MTLS_PORT" "$VSFTPD_MTLS_PASV" NO mtls
    write_proftpd_conf proftpd-mtls "$PROFTPD_MTLS_PORT" "$PROFTPD_MTLS_PASV" on "TLSv1.2 TLSv1.3" mtls
    write_proxy_confs
    for name in proftpd proftpd-noover proftpd-mtls; do
        "$PROFTPD_BIN" -t -c "$CONF/$name.conf" >"$LOGS/$name-configtest.log" 2>&1 ||
            { cat "$LOGS/$name-configtest.log" >&2; die "$name config test failed"; }
    done

    start_bg vsftpd "$VSFTPD_BIN" "$CONF/vsftpd.conf"
    start_bg vsftpd-implicit "$VSFTPD_BIN" "$CONF/vsftpd-implicit.conf"
    # -n: stay in the foreground so the pid we record is the listener's;
    # in that mode ProFTPD logs to stderr, i.e. logs/proftpd.stderr.
    start_bg proftpd "$PROFTPD_BIN" -n -c "$CONF/proftpd.conf"
    start_bg proftpd-noover "$PROFTPD_BIN" -n -c "$CONF/proftpd-noover.conf"
    start_bg vsftpd-mtls "$VSFTPD_BIN" "$CONF/vsftpd-mtls.conf"
    start_bg proftpd-mtls "$PROFTPD_BIN" -n -c "$CONF/proftpd-mtls.conf"
    # Pure-FTPd is configured on the command line only. -Y 3 = TLS required
    # on the control AND the data channel (-Y 2 would still allow PROT C).
    # -l pam as in Debian's packaging (all three servers go through PAM).
    # It only logs to syslog, which does not exist here: -O keeps at least a
    # transfer log.
    start_bg pure-ftpd "$PUREFTPD_BIN" \
        -S "$HOST,$PUREFTPD_PORT" -4 -p "$PUREFTPD_PASV" -P "$HOST" \
        -Y 3 -2 "$CERTS/server-combined.pem" \
        -l pam -E -A -H -u 100 \
        -c "$MAX_CLIENTS" -C "$MAX_CLIENTS" -I 10 \
        -O "clf:$LOGS/pure-ftpd-xfer.log" -g "$SRV/pure-ftpd.pid"

    # Foreground (no -D, -d): the pid recorded is the proxy's own.
    start_bg socks "$DANTED_BIN" -f "$CONF/socks.conf" -p "$SRV/socks.pid"
    start_bg socks-auth "$DANTED_BIN" -f "$CONF/socks-auth.conf" -p "$SRV/socks-auth.pid"
    start_bg http-proxy "$TINYPROXY_BIN" -d -c "$CONF/http-proxy.conf"
    start_bg http-proxy-auth "$TINYPROXY_BIN" -d -c "$CONF/http-proxy-auth.conf"

    for name in "${SERVERS[@]}"; do wait_ready "$name"; done
    write_env
    log "env written to $STATE/servers.env"
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
restart) cmd_start ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|status|restart" >&2
    exit 2
    ;;
esac
