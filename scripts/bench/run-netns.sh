#!/usr/bin/env bash
# The measuring half of scripts/bench.sh. It runs inside the benchmark's own network
# namespace (`ip netns exec ftpsfs-bench bash run-netns.sh`), so the FTPS server, the
# mounts and the added latency are all private to it; a FUSE mount made here lives in this
# command's mount namespace, which is why everything happens in this one process tree.
#
# Not meant to be run by hand: bench.sh exports the variables below.
#
#   BENCH DATA CA PASSWORD_FILE BENCH_USER    state dir, data dir, CA, password, FTP user
#   FTPSFS_BIN RCLONE_BIN VSFTPD_BIN PROFTPD_BIN NFQ_DELAY_BIN
#   RESULTS            TSV file to append to (latency system run metric value)
#   META               KEY=value file to append to (RTT measurements, checks)
#   RUNS LATENCIES SYSTEMS WORKLOADS
#   SEQ_FILE PAR_FILES CACHED_FILE SEQ_BYTES PAR_BYTES CACHED_BYTES
#   RAND_N RAND_N_LATENCY SMALL_N SMALL_N_LATENCY   counts at 0 ms and with added latency
#   META_TREE META_TREE_LATENCY   the tree walked by find / ls -lR
#   RAND_MAX_S         time limit of one random-read job
#   FTPSFS_CACHE       ftpsfs cache_size= (bytes)
#   UPLOAD_SRC         local copies of the small files, owned by root (rsync -a keeps owners)
#   WRITE_SERVERS      servers the write workloads run on: vsftpd and/or proftpd
set -euo pipefail

# shellcheck source=../lib/vsftpd-conf.sh
source "$BENCH_SCRIPTS/../lib/vsftpd-conf.sh"
# shellcheck source=../lib/proftpd-conf.sh
source "$BENCH_SCRIPTS/../lib/proftpd-conf.sh"
# shellcheck source=../lib/proxy-conf.sh
source "$BENCH_SCRIPTS/../lib/proxy-conf.sh"

HOST=127.0.0.1
VSFTPD_PORT=21021
PROFTPD_PORT=21022
# The proxies of ftpsfs-socks (Dante) and ftpsfs-http (tinyproxy).
SOCKS_PORT=1080
HTTP_PROXY_PORT=3128
# The read workloads run on vsftpd; the write workloads on each of WRITE_SERVERS.
SRV=vsftpd
SRV_PORT=$VSFTPD_PORT
# Where uploads go, under DATA (the FTP user's home on both servers).
UP=up
QUEUE=7
LOGS=$BENCH/logs
CONF=$BENCH/conf
PRIV=$BENCH/private # 0700: curl configs that hold the password
MNT=$BENCH/mnt
VLOG=$LOGS/vsftpd.log
PLOG=$LOGS/proftpd-verbs.log

VSFTPD_PID=
PROFTPD_PID=
SOCKS_PID=
HTTP_PROXY_PID=
DELAY_PID=
MOUNT_PID=
MOUNT_DIR=
LAT=0
SYS=
RUN=0
MOUNT_SEQ=0
TLS_RESUMED=0
TLS_FULL=0
# The last ftpsfs mount's own counts, from its unmount line.
LAST_RESUMED=0
LAST_FULL=0
LAST_REPLACED=0
LAST_TLS12=0

say() { echo "bench: $(date +%H:%M:%S) $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

# ---------------------------------------------------------------- cleanup

descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

is_mounted() {
    awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

stop_delay() {
    iptables-legacy -D INPUT -i lo -j NFQUEUE --queue-num "$QUEUE" 2>/dev/null || true
    if [[ -n $DELAY_PID ]]; then
        kill -TERM "$DELAY_PID" 2>/dev/null || true
        wait "$DELAY_PID" 2>/dev/null || true
        DELAY_PID=
    fi
}

cleanup() {
    local rc=$? p
    if [[ -n $MOUNT_DIR ]] && is_mounted "$MOUNT_DIR"; then
        fusermount3 -u "$MOUNT_DIR" 2>/dev/null || umount -l "$MOUNT_DIR" 2>/dev/null || true
    fi
    if [[ -n $MOUNT_PID ]]; then
        kill -TERM "$MOUNT_PID" 2>/dev/null || true
        wait "$MOUNT_PID" 2>/dev/null || true
    fi
    stop_delay
    if [[ -n $VSFTPD_PID ]]; then
        # The listener and the session processes it forked: all started here.
        for p in $(descendants "$VSFTPD_PID") "$VSFTPD_PID"; do kill -TERM "$p" 2>/dev/null || true; done
        wait "$VSFTPD_PID" 2>/dev/null || true
    fi
    if [[ -n $PROFTPD_PID ]]; then
        for p in $(descendants "$PROFTPD_PID") "$PROFTPD_PID"; do kill -TERM "$p" 2>/dev/null || true; done
        wait "$PROFTPD_PID" 2>/dev/null || true
    fi
    for p in $SOCKS_PID $HTTP_PROXY_PID; do
        for p in $(descendants "$p") "$p"; do kill -TERM "$p" 2>/dev/null || true; done
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers

rec() { printf '%s\t%s\t%s\t%s\t%s\n' "$LAT" "$SYS" "$RUN" "$1" "$2" >>"$RESULTS"; }
meta() { printf '%s=%s\n' "$1" "$2" >>"$META"; }

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }
mbps() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.1f", n / (b - a) / 1e6 }'; }

# vsftpd logs every command (log_ftp_protocol=YES), ProFTPD every command's verb (an
# ExtendedLog): counting lines between two marks counts what a workload sent to the
# server SRV. Trailing commands (the ABOR of an unneeded read-ahead stream, a pool's
# QUIT) land after the workload, so counts are taken a little later.
command_log() { if [[ $SRV == proftpd ]]; then echo "$PLOG"; else echo "$VLOG"; fi; }
log_mark() { wc -l <"$(command_log)"; }
count_since() {
    local from=$1 pattern=$2
    tail -n +"$((from + 1))" "$VLOG" | grep -cE "$pattern" || true
}
cmds_since() {
    if [[ $SRV == proftpd ]]; then
        tail -n +"$(($1 + 1))" "$PLOG" | wc -l
    else
        count_since "$1" 'FTP command: '
    fi
}
# What the server wrote to data connections (its transfer log), in MiB: more than the
# client needed when transfers are cut short (ABOR) or read twice.
sent_mib_since() {
    tail -n +"$(($1 + 1))" "$VLOG" | grep -E '(OK|FAIL) DOWNLOAD: ' |
        awk -F'", ' '{ split($3, a, " "); sum += a[1] } END { printf "%.1f", sum / 1048576 }'
}
lists_since() { count_since "$1" 'FTP command: Client "[^"]*", "(LIST|NLST|MLSD|STAT)'; }
# Pause so that what the previous step left in flight is counted before the next mark.
settle() { sleep "${1:-1}"; }

# User + system CPU seconds a process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"; }
cpu_delta() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

hwm_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# MiB of FILE in the kernel's page cache (mincore through fincore; reads nothing).
resident_mib() { fincore --bytes --noheadings --output RES "$1" | awk '{ printf "%.1f", $1 / 1048576 }'; }

# Evicts COUNT ranges of LEN bytes, evenly spread over FILE, from the kernel's page cache.
evict_ranges() {
    python3 - "$@" <<'PY'
import os, sys
path, count, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_RDONLY)
step = os.fstat(fd).st_size // count
for i in range(count):
    os.posix_fadvise(fd, i * step + step // 2, length, os.POSIX_FADV_DONTNEED)
os.close(fd)
PY
}

# Reads the server side of the files once, so that no workload waits for the disk.
warm_server() { cat "$@" >/dev/null; }

# ---------------------------------------------------------------- server

write_vsftpd_conf() {
    mkdir -p "$CONF" "$BENCH/vsftpd-empty"
    chmod 0755 "$BENCH/vsftpd-empty"
    # The test vsftpd's settings (scripts/lib/vsftpd-conf.sh), on this namespace's
    # loopback, with room for rclone's unlimited concurrency.
    vsftpd_conf scripts/bench/run-netns.sh "$HOST" "$VSFTPD_PORT" 20000 20999 NO YES 400 \
        "$BENCH/vsftpd-empty" "$BENCH/certs" "$VLOG" >"$CONF/vsftpd.conf"
}

start_vsftpd() {
    write_vsftpd_conf
    : >"$VLOG"
    : >"$LOGS/vsftpd.oops"
    # vsftpd writes fatal startup errors to fd 0, hence the log file as stdin.
    setsid "$VSFTPD_BIN" "$CONF/vsftpd.conf" 0<>"$LOGS/vsftpd.oops" >>"$LOGS/vsftpd.stderr" 2>&1 &
    VSFTPD_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$VSFTPD_PID" 2>/dev/null || die "vsftpd exited: $(cat "$LOGS/vsftpd.oops")"
        ss -Htln "sport = :$VSFTPD_PORT" | grep -q "$HOST:$VSFTPD_PORT" && break
        sleep 0.1
    done
    curl_base --list-only "ftp://$HOST:$VSFTPD_PORT/" -o /dev/null ||
        die "vsftpd: TLS login and listing failed (see $LOGS)"
    say "vsftpd listening on $HOST:$VSFTPD_PORT inside the namespace (pid $VSFTPD_PID)"
}

start_proftpd() {
    mkdir -p "$CONF" "$BENCH/srv"
    # The test ProFTPD's settings (scripts/lib/proftpd-conf.sh): TLS 1.2 and 1.3,
    # overwrites allowed, with a log of every command's verb.
    proftpd_conf scripts/bench/run-netns.sh proftpd "$HOST" "$PROFTPD_PORT" 22000 22999 on \
        "TLSv1.2 TLSv1.3" 400 "$BENCH/srv" "$LOGS" "$BENCH/certs" "$PLOG" >"$CONF/proftpd.conf"
    "$PROFTPD_BIN" -t -c "$CONF/proftpd.conf" >"$LOGS/proftpd-configtest.log" 2>&1 ||
        die "proftpd: config test failed (see $LOGS/proftpd-configtest.log)"
    : >"$PLOG"
    # -n: in the foreground, so that this pid is the listener's.
    setsid "$PROFTPD_BIN" -n -c "$CONF/proftpd.conf" </dev/null >>"$LOGS/proftpd.stderr" 2>&1 &
    PROFTPD_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$PROFTPD_PID" 2>/dev/null || die "proftpd exited (see $LOGS/proftpd.stderr)"
        ss -Htln "sport = :$PROFTPD_PORT" | grep -q "$HOST:$PROFTPD_PORT" && break
        sleep 0.1
    done
    curl_base --list-only "ftp://$HOST:$PROFTPD_PORT/" -o /dev/null ||
        die "proftpd: TLS login and listing failed (see $LOGS)"
    say "proftpd listening on $HOST:$PROFTPD_PORT inside the namespace (pid $PROFTPD_PID)"
}

# The proxies that ftpsfs-socks and ftpsfs-http go through, on this namespace's
# loopback, letting through both servers' control ports and passive ranges.
start_proxies() {
    mkdir -p "$CONF"
    local ports="$VSFTPD_PORT 20000:20999 $PROFTPD_PORT 22000:22999" i
    if [[ " $SYSTEMS " == *" ftpsfs-socks "* ]]; then
        danted_conf scripts/bench/run-netns.sh "$HOST" "$SOCKS_PORT" none "$LOGS/danted.log" \
            >"$CONF/danted.conf"
        setsid /usr/sbin/danted -f "$CONF/danted.conf" -p "$BENCH/danted.pid" \
            </dev/null >>"$LOGS/danted.stderr" 2>&1 &
        SOCKS_PID=$!
    fi
    if [[ " $SYSTEMS " == *" ftpsfs-http "* ]]; then
        tinyproxy_conf scripts/bench/run-netns.sh "$HOST" "$HTTP_PROXY_PORT" \
            "$LOGS/tinyproxy.log" "$ports" "" "" >"$CONF/tinyproxy.conf"
        setsid /usr/bin/tinyproxy -d -c "$CONF/tinyproxy.conf" \
            </dev/null >>"$LOGS/tinyproxy.stderr" 2>&1 &
        HTTP_PROXY_PID=$!
    fi
    for ((i = 0; i < 100; i++)); do
        { [[ -z $SOCKS_PID ]] || ss -Htln "sport = :$SOCKS_PORT" | grep -q .; } &&
            { [[ -z $HTTP_PROXY_PID ]] || ss -Htln "sport = :$HTTP_PROXY_PORT" | grep -q .; } &&
            return 0
        sleep 0.1
    done
    die "the proxies did not start (see $LOGS/danted.stderr, $LOGS/tinyproxy.stderr)"
}

# Makes SERVER (vsftpd or proftpd) the one the next workloads talk to.
use_server() {
    SRV=$1
    case $SRV in
    vsftpd) SRV_PORT=$VSFTPD_PORT ;;
    proftpd) SRV_PORT=$PROFTPD_PORT ;;
    *) die "unknown server $SRV" ;;
    esac
}

curl_base() {
    curl -sS --ssl-reqd --cacert "$CA" --max-time 600 -K "$PRIV/curl-user.conf" "$@"
}

# ---------------------------------------------------------------- latency

set_latency() {
    local rtt=$1
    stop_delay
    if [[ $rtt == 0 ]]; then
        # Plain loopback, as the mount issue's comparison asks.
        ip link set lo mtu 65536
    else
        # An Ethernet-sized MTU, and each packet held rtt/2 on its way in: once per
        # direction, because both ends are local and every packet enters through lo.
        ip link set lo mtu 1500
        "$NFQ_DELAY_BIN" "$QUEUE" "$(awk -v r="$rtt" 'BEGIN { print r / 2 }')" 2>>"$LOGS/nfq-delay.log" &
        DELAY_PID=$!
        sleep 0.3
        kill -0 "$DELAY_PID" 2>/dev/null || die "nfq-delay did not start (see $LOGS/nfq-delay.log)"
        iptables-legacy -A INPUT -i lo -j NFQUEUE --queue-num "$QUEUE"
    fi
    local out
    out=$(python3 "$BENCH_SCRIPTS/ftp-rtt.py" "$HOST" "$VSFTPD_PORT" "$BENCH_USER" "$PASSWORD_FILE" "$CA" 20)
    say "added RTT $rtt ms: measured with FTP NOOPs: $out"
    meta "rtt_$rtt" "$out"
}

# ---------------------------------------------------------------- mounts

# Mounts SRV for SYS: read-only for rclone (as its users mount for reading) unless the
# argument is "rw"; ftpsfs as it mounts by default (read-write).
mount_fs() {
    local dir=$MNT/$SYS i read_only=(--read-only) mode=${SYS#rclone-}
    [[ ${1:-} == rw ]] && read_only=()
    mkdir -p "$dir"
    MOUNT_SEQ=$((MOUNT_SEQ + 1))
    MOUNT_LOG=$LOGS/$SYS-$SRV-rtt$LAT-run$RUN-$MOUNT_SEQ.log
    case $SYS in
    ftpsfs | ftpsfs-base | ftpsfs-wb | ftpsfs-socks | ftpsfs-http)
        local bin=$FTPSFS_BIN extra=
        [[ $SYS == ftpsfs-base ]] && bin=$FTPSFS_BASE_BIN
        [[ $SYS == ftpsfs-socks ]] && extra=",proxy=socks5://$HOST:$SOCKS_PORT"
        [[ $SYS == ftpsfs-http ]] && extra=",proxy=http://$HOST:$HTTP_PROXY_PORT"
        # Write-back, with a journal of its own that each mount starts empty.
        if [[ $SYS == ftpsfs-wb ]]; then
            rm -rf "$BENCH/wb-cache"
            extra=",writeback,cache_dir=$BENCH/wb-cache"
        fi
        "$bin" "ftp://$BENCH_USER@$HOST:$SRV_PORT/" "$dir" -f \
            -o "ca_file=$CA,password_file=$PASSWORD_FILE,cache_size=$FTPSFS_CACHE,log_file=$MOUNT_LOG$extra${FTPSFS_OPTIONS:+,$FTPSFS_OPTIONS}" \
            </dev/null >>"$LOGS/ftpsfs.stderr" 2>&1 &
        ;;
    rclone-off | rclone-writes | rclone-full)
        [[ -n ${KEEP_RCLONE_CACHE:-} ]] || rm -rf "$BENCH/rclone-cache"
        # rclone cannot upload to vsftpd over TLS 1.3 (426 on every STOR): for writes
        # there it gets TLS 1.2, so that the comparison has a figure (the report says so).
        local tls13=()
        [[ ${1:-} == rw && $SRV == vsftpd ]] && tls13=(--ftp-disable-tls13)
        RCLONE_FTP_HOST=$HOST RCLONE_FTP_PORT=$SRV_PORT RCLONE_FTP_USER=$BENCH_USER \
            RCLONE_FTP_PASS=$RCLONE_PASS \
            "$RCLONE_BIN" mount :ftp: "$dir" --config "$BENCH/rclone.conf" \
            --ftp-explicit-tls --ca-cert "$CA" "${read_only[@]}" "${tls13[@]}" \
            --vfs-cache-mode "$mode" --cache-dir "$BENCH/rclone-cache" \
            --log-file "$MOUNT_LOG" --log-level NOTICE \
            </dev/null >>"$LOGS/rclone.stderr" 2>&1 &
        ;;
    *) die "unknown system $SYS" ;;
    esac
    MOUNT_PID=$!
    MOUNT_DIR=$dir
    for ((i = 0; i < 300; i++)); do
        is_mounted "$dir" && return 0
        kill -0 "$MOUNT_PID" 2>/dev/null || die "$SYS exited before mounting (see $MOUNT_LOG)"
        sleep 0.1
    done
    die "$SYS did not mount within 30 s"
}

unmount_fs() {
    local i line
    fusermount3 -u "$MOUNT_DIR" || umount -l "$MOUNT_DIR" || say "warning: cannot unmount $MOUNT_DIR"
    for ((i = 0; i < 300; i++)); do
        kill -0 "$MOUNT_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$MOUNT_PID" 2>/dev/null; then
        say "$SYS (pid $MOUNT_PID) still running 30 s after unmount; terminating it"
        kill -TERM "$MOUNT_PID" 2>/dev/null || true
    fi
    wait "$MOUNT_PID" 2>/dev/null || true
    MOUNT_PID=
    MOUNT_DIR=
    if [[ $SYS == ftpsfs ]]; then
        # The last line ftpsfs logs: `unmounted stats=FsStats {..} tls=data connections
        # resumed N, full handshakes M; ... control connections replaced for lack of
        # tickets R, opened on TLS 1.2 for that T`.
        line=$(grep -oE 'resumed [0-9]+, full handshakes [0-9]+;.*replaced for lack of tickets [0-9]+, opened on TLS 1.2 for that [0-9]+' "$MOUNT_LOG" | tail -n 1 || true)
        if [[ $line =~ resumed\ ([0-9]+),\ full\ handshakes\ ([0-9]+).*tickets\ ([0-9]+),.*that\ ([0-9]+)$ ]]; then
            LAST_RESUMED=${BASH_REMATCH[1]} LAST_FULL=${BASH_REMATCH[2]}
            LAST_REPLACED=${BASH_REMATCH[3]} LAST_TLS12=${BASH_REMATCH[4]}
            TLS_RESUMED=$((TLS_RESUMED + LAST_RESUMED))
            TLS_FULL=$((TLS_FULL + LAST_FULL))
        else
            say "warning: no stats line in $MOUNT_LOG"
        fi
    fi
    if grep -qE ' (WARN|ERROR) ' "$MOUNT_LOG" 2>/dev/null; then
        say "warning: $SYS logged warnings/errors: $(grep -cE ' (WARN|ERROR) ' "$MOUNT_LOG") in $MOUNT_LOG"
        rec log_problems "$(grep -cE ' (WARN|ERROR) ' "$MOUNT_LOG")"
    fi
}

# ---------------------------------------------------------------- workloads on a mount

# Runs CMD... and sets ELAPSED to its wall time in seconds. A failure (an I/O error from
# the mount, say) is reported and returns 1; the caller then records ERR for the figure
# and the run goes on.
timed() {
    local t0=$EPOCHREALTIME rc=0
    "$@" || rc=$?
    ELAPSED=$(elapsed "$t0" "$EPOCHREALTIME")
    if [[ $rc -ne 0 ]]; then
        say "warning: $SYS, RTT $LAT ms, run $RUN: '$*' failed (exit $rc; see ${MOUNT_LOG:-the logs})"
    fi
    return $rc
}

# Records BYTES / ELAPSED in MB/s under METRIC if the last step worked, else ERR.
rec_rate() { if [[ $3 -eq 0 ]]; then rec "$1" "$(awk -v n="$2" -v s="$ELAPSED" 'BEGIN { printf "%.1f", n / s / 1e6 }')"; else rec "$1" ERR; fi; }
rec_time() { if [[ $2 -eq 0 ]]; then rec "$1" "$ELAPSED"; else rec "$1" ERR; fi; }

# 1, 2, 7: sequential read, warm re-read, re-read after drop_caches, peak RSS.
m_seq() {
    local m=$MNT/$SYS mark c0 rc
    mount_fs
    settle 0.5
    mark=$(log_mark)
    c0=$(cpu_s "$MOUNT_PID")
    rc=0 && timed cp "$m/$SEQ_FILE" /dev/null || rc=1
    rec_rate seq_mbps "$SEQ_BYTES" $rc
    rec seq_cpu_s "$(cpu_delta "$c0" "$(cpu_s "$MOUNT_PID")")"
    rec seq_rss_mib "$(hwm_mib "$MOUNT_PID")"
    settle
    rec seq_cmds "$(cmds_since "$mark")"
    rec seq_sent_mib "$(sent_mib_since "$mark")"

    # 2: the same file again, on the same mount: the kernel page cache may serve it.
    # How much of it the kernel still holds tells what the mount had to fetch.
    rec warm_resident_mib "$(resident_mib "$m/$SEQ_FILE")"
    mark=$(log_mark)
    rc=0 && timed cp "$m/$SEQ_FILE" /dev/null || rc=1
    rec_rate warm_mbps "$SEQ_BYTES" $rc
    settle
    rec warm_cmds "$(cmds_since "$mark")"
    rec warm_sent_mib "$(sent_mib_since "$mark")"

    # 2a: the same again after evicting ten 2 MiB ranges, evenly spread, from the page
    # cache: what a warm re-read costs when the kernel has reclaimed part of the file
    # (as this kernel's DAMON reclaim does), made repeatable.
    cp "$m/$SEQ_FILE" /dev/null || true
    evict_ranges "$m/$SEQ_FILE" 10 $((2 << 20))
    mark=$(log_mark)
    rc=0 && timed cp "$m/$SEQ_FILE" /dev/null || rc=1
    rec_rate holes_mbps "$SEQ_BYTES" $rc
    settle
    rec holes_cmds "$(cmds_since "$mark")"
    rec holes_sent_mib "$(sent_mib_since "$mark")"

    # 2b: a file smaller than ftpsfs's cache, read once, then the kernel's caches are
    # dropped: only the mount's own cache can serve the second read.
    timed cp "$m/$CACHED_FILE" /dev/null || true
    settle
    drop_caches
    warm_server "$DATA/$CACHED_FILE"
    mark=$(log_mark)
    rc=0 && timed cp "$m/$CACHED_FILE" /dev/null || rc=1
    rec_rate dropped_mbps "$CACHED_BYTES" $rc
    settle
    rec dropped_cmds "$(cmds_since "$mark")"
    rec seq_rss_after_mib "$(hwm_mib "$MOUNT_PID")"
    unmount_fs
}

par_cp() {
    local f pids=() p rc=0
    for f in $PAR_FILES; do
        cp "$1/$f" /dev/null &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    return $rc
}

# 6, 7: four concurrent cp of different files.
m_par() {
    local m=$MNT/$SYS c0 mark rc
    mount_fs
    settle 0.5
    mark=$(log_mark)
    c0=$(cpu_s "$MOUNT_PID")
    rc=0 && timed par_cp "$m" || rc=1
    rec_rate par_mbps $((4 * PAR_BYTES)) $rc
    rec par_cpu_s "$(cpu_delta "$c0" "$(cpu_s "$MOUNT_PID")")"
    rec par_rss_mib "$(hwm_mib "$MOUNT_PID")"
    settle
    rec par_sent_mib "$(sent_mib_since "$mark")"
    unmount_fs
}

# 5: random 4 KiB reads with O_DIRECT, so that the kernel page cache serves none of them.
fio_rand() {
    fio --name=randread --filename="$1" --readonly --rw=randread --bs=4k \
        --direct=1 --ioengine=psync --iodepth=1 --numjobs=1 --size="$SEQ_BYTES" \
        --number_ios="$2" --runtime="$RAND_MAX_S" --randrepeat=1 --invalidate=0 \
        --output-format=json >"$LOGS/fio.json" 2>>"$LOGS/fio.stderr"
}

m_rand() {
    local m=$MNT/$SYS mark iops n=$1
    mount_fs
    settle 0.5
    mark=$(log_mark)
    if timed fio_rand "$m/$SEQ_FILE" "$n"; then
        iops=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["jobs"][0]["read"]; print("%.1f %d" % (r["iops"], r["total_ios"]))' "$LOGS/fio.json")
        rec rand_iops "${iops% *}"
        rec rand_done "${iops#* }"
    else
        rec rand_iops ERR
    fi
    settle
    rec rand_cmds "$(cmds_since "$mark")"
    rec rand_sent_mib "$(sent_mib_since "$mark")"
    unmount_fs
}

find_to() { find "$1" >"$2"; }

# 3: metadata walk, cold and warm; and the 5,000-file directory.
m_meta() {
    local tree=$1 m=$MNT/$SYS mark rc out=$PRIV/find.out
    mount_fs
    settle 0.5
    mark=$(log_mark)
    rc=0 && timed find_to "$m/$tree" "$out" || rc=1
    rec_time find_cold_s $rc
    rec find_entries "$(wc -l <"$out")"
    rec find_cold_lists "$(lists_since "$mark")"
    mark=$(log_mark)
    rc=0 && timed find_to "$m/$tree" "$out" || rc=1
    rec_time find_warm_s $rc
    rec find_warm_lists "$(lists_since "$mark")"
    mark=$(log_mark)
    rc=0 && timed find_to "$m/dir5000" "$out" || rc=1
    rec_time dir5000_s $rc
    rec dir5000_entries "$(wc -l <"$out")"
    rec dir5000_lists "$(lists_since "$mark")"
    unmount_fs

    mount_fs
    settle 0.5
    mark=$(log_mark)
    rc=0 && timed ls -lR "$m/$tree" >/dev/null || rc=1
    rec_time lslr_cold_s $rc
    rec lslr_cold_lists "$(lists_since "$mark")"
    rec lslr_cold_cmds "$(cmds_since "$mark")"
    mark=$(log_mark)
    rc=0 && timed ls -lR "$m/$tree" >/dev/null || rc=1
    rec_time lslr_warm_s $rc
    rec lslr_warm_lists "$(lists_since "$mark")"
    unmount_fs
}

# The first N of the 2,000 small files (100 per directory, sorted), as paths under DATA.
small_dirs() { (cd "$DATA" && find small -mindepth 1 -maxdepth 1 -type d | LC_ALL=C sort | head -n $(($1 / 100))); }
small_paths() { (cd "$DATA" && find $(small_dirs "$1") -type f | LC_ALL=C sort); }

# 4: many small files copied to local disk.
m_small() {
    local n=$1 m=$MNT/$SYS mark dest=$BENCH/copy d rc srcs=()
    for d in $(small_dirs "$n"); do srcs+=("$m/$d"); done
    rm -rf "$dest"
    mkdir -p "$dest"
    mount_fs
    settle 0.5
    mark=$(log_mark)
    rc=0 && timed rsync -a "${srcs[@]}" "$dest/" || rc=1
    rec_time small_s $rc
    settle
    rec small_cmds "$(cmds_since "$mark")"
    unmount_fs
    [[ $(find "$dest" -type f | wc -l) -eq $n ]] || say "warning: rsync from $SYS copied $(find "$dest" -type f | wc -l) files, not $n"
    rm -rf "$dest"
}

# 10 (ftpsfs only): reopening cached files under a listing fetched since. vsftpd's LIST
# gives minutes, so ftpsfs asks MDTM for each such file before it reuses its cached
# data: the time of those reopens and their MDTM count, the same for a cold read, and
# the MDTMs of an ls -lR (none should be sent).
m_reval() {
    local n=$1 m=$MNT/$SYS mark rc files=() saved=${FTPSFS_OPTIONS:-}
    [[ $SYS == ftpsfs ]] || return 0
    mapfile -t files < <(small_paths "$n")
    files=("${files[@]/#/$m/}")
    FTPSFS_OPTIONS="dir_cache=1${saved:+,$saved}"
    mount_fs
    FTPSFS_OPTIONS=$saved
    settle 0.5
    mark=$(log_mark)
    rc=0 && timed cat "${files[@]}" >/dev/null || rc=1
    rec_time reval_cold_s $rc
    settle 2
    rec reval_cold_mdtm "$(count_since "$mark" '"MDTM ')"
    # The first reopen refetches what the cold read cached under the listed minute (its
    # exact time was not known then); the second reuses what the first cached under the
    # exact time.
    for step in reopen reopen2; do
        mark=$(log_mark)
        rc=0 && timed cat "${files[@]}" >/dev/null || rc=1
        rec_time "reval_${step}_s" $rc
        settle 2
        rec "reval_${step}_mdtm" "$(count_since "$mark" '"MDTM ')"
        rec "reval_${step}_retr" "$(count_since "$mark" '"RETR ')"
    done
    mark=$(log_mark)
    rc=0 && timed ls -lR "$m/small" >/dev/null || rc=1
    rec_time reval_lslr_s $rc
    settle 1
    rec reval_lslr_mdtm "$(count_since "$mark" '"MDTM ')"
    unmount_fs
}

# 10: re-read after a remount. A file of CACHED_BYTES and N small files are read, the
# mount is unmounted and mounted again, and the same are read again: ftpsfs with its
# disk cache (disk_cache=), rclone in full cache mode with its cache directory kept.
# Without drop_caches: the cache files may still be in the kernel's page cache, as on a
# machine that remounts after a network change rather than a reboot.
m_remount() {
    local n=$1 m=$MNT/$SYS mark rc files=() saved=${FTPSFS_OPTIONS:-}
    case $SYS in ftpsfs | rclone-full) ;; *) return 0 ;; esac
    mapfile -t files < <(small_paths "$n")
    files=("${files[@]/#/$m/}")
    rm -rf "$BENCH/ftpsfs-disk"
    [[ $SYS == ftpsfs ]] && FTPSFS_OPTIONS="disk_cache=2G,cache_dir=$BENCH/ftpsfs-disk${saved:+,$saved}"
    mount_fs
    cat "$m/$CACHED_FILE" "${files[@]}" >/dev/null || say "warning: $SYS: the first read before the remount failed"
    # The disk writes (ftpsfs's in the background, rclone's cache) end first.
    settle 3
    unmount_fs
    KEEP_RCLONE_CACHE=1 mount_fs
    FTPSFS_OPTIONS=$saved
    settle 0.5
    mark=$(log_mark)
    rc=0 && timed cat "$m/$CACHED_FILE" >/dev/null || rc=1
    rec_rate remount_big_mbps "$CACHED_BYTES" $rc
    rc=0 && timed cat "${files[@]}" >/dev/null || rc=1
    rec_time remount_small_s $rc
    settle 1
    rec remount_retr "$(count_since "$mark" '"RETR ')"
    rec remount_mdtm "$(count_since "$mark" '"MDTM ')"
    unmount_fs
    rm -rf "$BENCH/ftpsfs-disk"
}

# ---------------------------------------------------------------- writes

# An empty directory NAME for one workload's uploads, under UP on the server's disk,
# writable by the FTP user; prints its path.
fresh_upload_dir() {
    local group dir=$DATA/$UP/$1
    group=$(id -gn "$BENCH_USER")
    install -d -o "$BENCH_USER" -g "$group" -m 0755 "$DATA/$UP"
    rm -rf "$dir"
    install -d -o "$BENCH_USER" -g "$group" -m 0755 "$dir"
    echo "$dir"
}

# The files under DIR on the server's disk as sorted "size path" lines, leaving out
# names that start with a dot (the temporary files of ftpsfs, rsync and rclone).
server_manifest() {
    [[ -d $1 ]] || return 0
    (cd "$1" && find . -type f ! -name '.*' -printf '%s %P\n' 2>/dev/null | LC_ALL=C sort)
}

# Waits until DIR on the server's disk holds exactly what the file MANIFEST lists, then
# sets ELAPSED to the time since T0: an upload counts once it is complete on the server,
# not when the program's close() returned (rclone's writes mode uploads after the
# close). Fails after LIMIT seconds, or as soon as rclone logs a failed upload (it
# retries forever).
until_on_server() {
    local t0=$1 dir=$2 manifest=$3 limit=$4
    while ! cmp -s <(server_manifest "$dir") "$manifest"; do
        if [[ $SYS == rclone-* ]] && grep -q 'failed to upload' "$MOUNT_LOG" 2>/dev/null; then
            say "warning: $SYS on $SRV, RTT $LAT ms, run $RUN: upload failed: $(grep -m 1 -A 1 'Failed to copy' "$MOUNT_LOG" | tr -s '\n\t' '  ')"
            return 1
        fi
        if awk -v a="$t0" -v b="$EPOCHREALTIME" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then
            say "warning: $SYS on $SRV, RTT $LAT ms, run $RUN: not all on the server after $limit s"
            return 1
        fi
        sleep 0.05
    done
    ELAPSED=$(elapsed "$t0" "$EPOCHREALTIME")
}

# The uploaded copy must be the source, byte for byte, or the figure does not count.
same_content() {
    cmp -s "$1" "$2" && return 0
    say "warning: $SYS on $SRV, RTT $LAT ms, run $RUN: $2 differs from $1"
    return 1
}

# What the last ftpsfs mount's data connections did (from its unmount line).
rec_write_tls() {
    [[ $SYS == ftpsfs ]] || return 0
    rec "${1}_resumed_$SRV" "$LAST_RESUMED"
    rec "${1}_full_$SRV" "$LAST_FULL"
    rec "${1}_replaced_$SRV" "$LAST_REPLACED"
    rec "${1}_tls12_$SRV" "$LAST_TLS12"
}

# 8: cp of the big file into the mount; MB/s until the file is whole on the server.
m_wcp() {
    local m=$MNT/$SYS name=wcp-$SYS dest manifest=$PRIV/wcp.manifest mark c0 rc t0
    dest=$(fresh_upload_dir "$name")
    printf '%s %s\n' "$SEQ_BYTES" "$SEQ_FILE" >"$manifest"
    mount_fs rw
    settle 0.5
    mark=$(log_mark)
    c0=$(cpu_s "$MOUNT_PID")
    t0=$EPOCHREALTIME
    rc=0 && timed cp "$DATA/$SEQ_FILE" "$m/$UP/$name/" || rc=1
    rec_time "wcp_close_s_$SRV" $rc
    if [[ $rc -eq 0 ]]; then until_on_server "$t0" "$dest" "$manifest" 600 || rc=1; fi
    rec_rate "wcp_mbps_$SRV" "$SEQ_BYTES" $rc
    rec "wcp_cpu_s_$SRV" "$(cpu_delta "$c0" "$(cpu_s "$MOUNT_PID")")"
    rec "wcp_rss_mib_$SRV" "$(hwm_mib "$MOUNT_PID")"
    settle
    rec "wcp_cmds_$SRV" "$(cmds_since "$mark")"
    unmount_fs
    rec_write_tls wcp
    if [[ $rc -eq 0 ]] && ! same_content "$DATA/$SEQ_FILE" "$dest/$SEQ_FILE"; then
        rec "wcp_corrupt_$SRV" 1
    fi
    rm -rf "$dest"
}

# The first N small files' directories (small/NN) and their "size NN/fNNNN.bin" lines.
small_manifest() {
    local dirs
    dirs=$(small_dirs "$1")
    (cd "$UPLOAD_SRC/small" && find ${dirs//small\//} -type f -printf '%s %p\n' | LC_ALL=C sort)
}

# 9: rsync -a of N small files into the mount; seconds until all are on the server.
m_wsmall() {
    local n=$1 m=$MNT/$SYS name=wsmall-$SYS dest manifest=$PRIV/wsmall-$1.manifest d rc t0 mark srcs=()
    for d in $(small_dirs "$n"); do srcs+=("$UPLOAD_SRC/$d"); done
    small_manifest "$n" >"$manifest"
    dest=$(fresh_upload_dir "$name")
    mount_fs rw
    settle 0.5
    mark=$(log_mark)
    t0=$EPOCHREALTIME
    rc=0 && timed rsync -a "${srcs[@]}" "$m/$UP/$name/" || rc=1
    rec_time "wsmall_close_s_$SRV" $rc
    if [[ $rc -eq 0 ]]; then until_on_server "$t0" "$dest" "$manifest" 900 || rc=1; fi
    rec_time "wsmall_s_$SRV" $rc
    rec "wsmall_rss_mib_$SRV" "$(hwm_mib "$MOUNT_PID")"
    settle
    rec "wsmall_cmds_$SRV" "$(cmds_since "$mark")"
    unmount_fs
    rec_write_tls wsmall
    if [[ $rc -eq 0 ]] && ! diff -rq "$UPLOAD_SRC/small/00" "$dest/00" >/dev/null; then
        say "warning: $SYS on $SRV: uploaded small files differ from the source"
        rec "wsmall_corrupt_$SRV" 1
    fi
    rm -rf "$dest"
}

# ---------------------------------------------------------------- the raw limit: curl

url() { echo "ftp://$HOST:$SRV_PORT/$1"; }

# curl's own timings: from "about to transfer" (after login, EPSV, SIZE, RETR) to the
# end, so the raw limit leaves out the login that the mounts did before the workload.
CURL_TIMES='%{time_pretransfer} %{time_total}\n'

r_seq() {
    local mark times
    mark=$(log_mark)
    times=$(curl_base "$(url "$SEQ_FILE")" -o /dev/null -w "$CURL_TIMES")
    rec seq_mbps "$(awk -v n="$SEQ_BYTES" -v t="$times" 'BEGIN { split(t, a, " "); printf "%.1f", n / (a[2] - a[1]) / 1e6 }')"
    settle 0.3
    rec seq_cmds "$(cmds_since "$mark")"
    rec seq_sent_mib "$(sent_mib_since "$mark")"
    for n in ${SEQ_SPLITS:-4}; do r_seq_split "$n"; done
}

# What N connections can carry together: the file in N ranges, one curl each, at once
# (as lftp's pget -n N does). Timed from the first start to the last end, login included.
r_seq_split() {
    local n=$1 i part from to pids=() p rc=0 t0
    part=$(((SEQ_BYTES + n - 1) / n))
    t0=$EPOCHREALTIME
    for ((i = 0; i < n; i++)); do
        from=$((i * part)) to=$(((i + 1) * part - 1))
        ((to < SEQ_BYTES)) || to=$((SEQ_BYTES - 1))
        curl_base "$(url "$SEQ_FILE")" --range "$from-$to" -o /dev/null -w "%{time_pretransfer} %{time_starttransfer} %{time_total} %{speed_download}\n" >>"$LOGS/split$n.times" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    ELAPSED=$(elapsed "$t0" "$EPOCHREALTIME")
    rec_rate "seq_split${n}_mbps" "$SEQ_BYTES" $rc
}

r_par() {
    local f i=0 pids=() times
    for f in $PAR_FILES; do
        i=$((i + 1))
        curl_base "$(url "$f")" -o /dev/null -w "$CURL_TIMES" >"$PRIV/par-$i.times" &
        pids+=($!)
    done
    wait "${pids[@]}"
    # All four start together: the transfers span from the first one's start to the
    # last one's end.
    times=$(cat "$PRIV"/par-[1-4].times)
    rec par_mbps "$(echo "$times" | awk -v n=$((4 * PAR_BYTES)) '
        NR == 1 || $1 < s { s = $1 } $2 > e { e = $2 } END { printf "%.1f", n / (e - s) / 1e6 }')"
}

# One LIST per directory on one connection (ftp-raw.py; curl stalls between listings).
r_meta() {
    local tree=$1 mark out list=$PRIV/dirs-${1//\//_}.list
    (cd "$DATA" && find "$tree" -type d | LC_ALL=C sort) >"$list"
    mark=$(log_mark)
    out=$(raw_client list "$list")
    rec find_cold_s "$(seconds_of "$out")"
    settle 0.3
    rec find_cold_lists "$(lists_since "$mark")"
    echo dir5000 >"$PRIV/dirs-dir5000.list"
    mark=$(log_mark)
    out=$(raw_client list "$PRIV/dirs-dir5000.list")
    rec dir5000_s "$(seconds_of "$out")"
    settle 0.3
    rec dir5000_lists "$(lists_since "$mark")"
}

# A minimal client (ftp-raw.py) where curl cannot show the limit: see its docstring.
raw_client() {
    python3 "$BENCH_SCRIPTS/ftp-raw.py" "$1" "$HOST" "$SRV_PORT" "$BENCH_USER" "$PASSWORD_FILE" "$CA" "${@:2}"
}

r_small() {
    local n=$1 mark out list=$PRIV/small-$1.list dest=$BENCH/copy
    small_paths "$n" >"$list"
    rm -rf "$dest"
    mark=$(log_mark)
    out=$(raw_client files "$list" "$dest")
    rec small_s "$(seconds_of "$out")"
    settle 0.3
    rec small_cmds "$(cmds_since "$mark")"
    rm -rf "$dest"
}

r_rand() {
    local n=$1 mark out ops
    mark=$(log_mark)
    out=$(raw_client rand "$SEQ_FILE" "$SEQ_BYTES" "$n" "$RAND_MAX_S")
    ops=$(ops_of "$out")
    rec rand_iops "$(awk -v n="$ops" -v s="$(seconds_of "$out")" 'BEGIN { printf "%.1f", n / s }')"
    rec rand_done "$ops"
    settle 0.3
    rec rand_cmds "$(cmds_since "$mark")"
    rec rand_sent_mib "$(sent_mib_since "$mark")"
}

# 8: curl -T of the big file; its own transfer time, as for downloads.
r_wcp() {
    local name=wcp-raw dest mark times
    dest=$(fresh_upload_dir "$name")
    mark=$(log_mark)
    if times=$(curl_base -T "$DATA/$SEQ_FILE" "$(url "$UP/$name/$SEQ_FILE")" -w "$CURL_TIMES"); then
        rec "wcp_mbps_$SRV" "$(awk -v n="$SEQ_BYTES" -v t="$times" 'BEGIN { split(t, a, " "); printf "%.1f", n / (a[2] - a[1]) / 1e6 }')"
        same_content "$DATA/$SEQ_FILE" "$dest/$SEQ_FILE" || rec "wcp_corrupt_$SRV" 1
    else
        say "warning: curl -T to $SRV failed"
        rec "wcp_mbps_$SRV" ERR
    fi
    settle 0.3
    rec "wcp_cmds_$SRV" "$(cmds_since "$mark")"
    rm -rf "$dest"
}

# 9: the small files uploaded one after another on one connection (ftp-raw.py put).
r_wsmall() {
    local n=$1 name=wsmall-raw dest mark out list=$PRIV/wsmall-$1.list
    small_manifest "$n" | cut -d' ' -f2- >"$list"
    dest=$(fresh_upload_dir "$name")
    mark=$(log_mark)
    if out=$(raw_client put "$list" "$UPLOAD_SRC/small" "$UP/$name"); then
        rec "wsmall_s_$SRV" "$(seconds_of "$out")"
    else
        say "warning: ftp-raw.py put to $SRV failed"
        rec "wsmall_s_$SRV" ERR
    fi
    settle 0.3
    rec "wsmall_cmds_$SRV" "$(cmds_since "$mark")"
    rm -rf "$dest"
}

seconds_of() { [[ $1 =~ seconds=([0-9.]+) ]] && echo "${BASH_REMATCH[1]}"; }
ops_of() { [[ $1 =~ ops=([0-9]+) ]] && echo "${BASH_REMATCH[1]}"; }

# ---------------------------------------------------------------- main

mkdir -p "$LOGS" "$MNT"
install -d -m 0700 "$PRIV"
(umask 077 && printf 'user = "%s:%s"\n' "$BENCH_USER" "$(head -n 1 "$PASSWORD_FILE")" >"$PRIV/curl-user.conf")
RCLONE_PASS=$("$RCLONE_BIN" obscure - <"$PASSWORD_FILE")
: >"$BENCH/rclone.conf"

wants() { [[ " $WORKLOADS " == *" $1 "* ]]; }
writes_wanted() { wants wcp || wants wsmall; }

ip link set lo up
start_vsftpd
if writes_wanted && [[ " $WRITE_SERVERS " == *" proftpd "* ]]; then start_proftpd; fi
start_proxies

for LAT in $LATENCIES; do
    set_latency "$LAT"
    n_rand=$RAND_N n_small=$SMALL_N tree=$META_TREE
    [[ $LAT == 0 ]] || n_rand=$RAND_N_LATENCY n_small=$SMALL_N_LATENCY tree=$META_TREE_LATENCY
    meta "rand_n_$LAT" "$n_rand"
    meta "small_n_$LAT" "$n_small"
    meta "tree_$LAT" "$tree $(find "$DATA/$tree" -type d | wc -l) $(find "$DATA/$tree" -type f | wc -l)"
    for ((RUN = 1; RUN <= RUNS; RUN++)); do
        # The server reads from its page cache, never from disk.
        warm_server "$DATA/$SEQ_FILE" $(for f in $PAR_FILES; do echo "$DATA/$f"; done) "$DATA/$CACHED_FILE"
        # And the uploads read their sources from the page cache.
        if wants wsmall; then find "$UPLOAD_SRC" -type f -exec cat {} + >/dev/null; fi
        for SYS in $SYSTEMS; do
            say "RTT $LAT ms, run $RUN/$RUNS: $SYS"
            # Other work on the machine (a build, a test suite) skews the figures: note
            # the load when each system's turn starts.
            meta "load_${LAT}_${RUN}_$SYS" "$(cut -d' ' -f1 /proc/loadavg)"
            TLS_RESUMED=0
            TLS_FULL=0
            # Reads on vsftpd, by every system but rclone's writes mode (for reading it
            # is its cache mode off).
            use_server vsftpd
            if [[ $SYS == raw ]]; then
                wants seq && r_seq
                wants par && r_par
                wants rand && r_rand "$n_rand"
                wants meta && r_meta "$tree"
                wants small && r_small "$n_small"
            elif [[ $SYS != rclone-writes && $SYS != ftpsfs-wb ]]; then
                wants seq && m_seq
                wants par && m_par
                wants rand && m_rand "$n_rand"
                wants meta && m_meta "$tree"
                wants small && m_small "$n_small"
                wants reval && m_reval "$n_small"
                wants remount && m_remount "$n_small"
            fi
            # Writes on each server, by every system but rclone's full cache mode (for
            # writing it is its writes mode).
            if [[ $SYS != rclone-full ]]; then
                for server in $WRITE_SERVERS; do
                    use_server "$server"
                    if [[ $SYS == raw ]]; then
                        wants wcp && r_wcp
                        wants wsmall && r_wsmall "$n_small"
                    else
                        wants wcp && m_wcp
                        wants wsmall && m_wsmall "$n_small"
                    fi
                done
                use_server vsftpd
            fi
            if [[ $SYS == ftpsfs ]]; then
                rec tls_resumed "$TLS_RESUMED"
                rec tls_full "$TLS_FULL"
            fi
        done
    done
done
stop_delay
say "done"
