#!/usr/bin/env python3
"""Turns the raw results of scripts/bench.sh into Markdown tables of medians and ratios.

    report.py RESULTS_DIR [--doc docs/BENCHMARKS.md]

RESULTS_DIR holds results.tsv (latency, system, run, metric, value) and meta.env
(KEY=value: machine, versions, measured RTTs). The report goes to stdout; with --doc it
also replaces the part of that file between the bench:results markers (or creates the
file with them).
"""
import os
import re
import statistics
import sys
from collections import defaultdict

BEGIN = "<!-- bench:results:begin -->"
END = "<!-- bench:results:end -->"

SYSTEMS = [
    ("ftpsfs", "ftpsfs"),
    ("ftpsfs-base", "ftpsfs<br>earlier build"),
    ("ftpsfs-wb", "ftpsfs<br>writeback"),
    ("ftpsfs-socks", "ftpsfs<br>via SOCKS5"),
    ("ftpsfs-http", "ftpsfs<br>via HTTP CONNECT"),
    ("rclone-off", "rclone<br>cache off"),
    ("rclone-writes", "rclone<br>cache writes"),
    ("rclone-full", "rclone<br>cache full"),
    ("raw", "raw limit<br>(curl / ftp-raw.py)"),
]
RATIOS = [
    ("ftpsfs-base", "ftpsfs ÷<br>earlier build"),
    ("rclone-off", "ftpsfs ÷<br>rclone off"),
    ("rclone-writes", "ftpsfs ÷<br>rclone writes"),
    ("rclone-full", "ftpsfs ÷<br>rclone full"),
    ("raw", "ftpsfs ÷<br>raw"),
]

# metric, label, unit, better ("high", "low" or None for counts, which get no ratio)
ROWS = [
    ("seq_mbps", "1. Sequential read: `cp` {seq} to /dev/null", "MB/s", "high"),
    ("seq_cmds", "&emsp;FTP commands sent", "count", None),
    ("seq_sent_mib", "&emsp;MiB sent by the server", "MiB", "low"),
    ("seq_cpu_s", "&emsp;CPU time of the mount process", "s", "low"),
    ("warm_mbps", "2. Warm re-read of the same file, same mount", "MB/s", "high"),
    ("warm_resident_mib", "&emsp;MiB of the file in the kernel's page cache before it", "MiB", None),
    ("warm_cmds", "&emsp;FTP commands sent", "count", None),
    ("warm_sent_mib", "&emsp;MiB sent by the server", "MiB", "low"),
    ("holes_mbps", "2a. Re-read with ten 2 MiB ranges evicted from the page cache", "MB/s", "high"),
    ("holes_cmds", "&emsp;FTP commands sent", "count", None),
    ("holes_sent_mib", "&emsp;MiB sent by the server", "MiB", "low"),
    ("dropped_mbps", "2b. Re-read of a {cached} file after `drop_caches`", "MB/s", "high"),
    ("dropped_cmds", "&emsp;FTP commands sent", "count", None),
    ("find_cold_s", "3. `find` over {tree}, cold", "s", "low"),
    ("find_cold_lists", "&emsp;listing commands", "count", None),
    ("find_warm_s", "3. `find`, warm (same mount)", "s", "low"),
    ("find_warm_lists", "&emsp;listing commands", "count", None),
    ("lslr_cold_s", "3. `ls -lR`, cold", "s", "low"),
    ("lslr_cold_lists", "&emsp;listing commands", "count", None),
    ("lslr_cold_cmds", "&emsp;FTP commands (all)", "count", None),
    ("lslr_warm_s", "3. `ls -lR`, warm (same mount)", "s", "low"),
    ("lslr_warm_lists", "&emsp;listing commands", "count", None),
    ("dir5000_s", "3. `find` over one 5,000-file directory", "s", "low"),
    ("dir5000_lists", "&emsp;listing commands", "count", None),
    ("small_s", "4. `rsync -a` of {small} files of 4–64 KiB to local disk", "s", "low"),
    ("small_cmds", "&emsp;FTP commands sent", "count", None),
    ("rand_iops", "5. Random 4 KiB reads (O_DIRECT): {rand} reads or {rand_s} s", "reads/s", "high"),
    ("rand_done", "&emsp;reads done", "count", None),
    ("rand_cmds", "&emsp;FTP commands sent", "count", None),
    ("rand_sent_mib", "&emsp;MiB sent by the server", "MiB", "low"),
    ("par_mbps", "6. 4 concurrent `cp` of different {par} files", "MB/s", "high"),
    ("par_sent_mib", "&emsp;MiB sent by the server", "MiB", "low"),
    ("par_cpu_s", "&emsp;CPU time of the mount process", "s", "low"),
    ("seq_rss_mib", "7. Peak RSS (VmHWM) of the mount process during 1", "MiB", "low"),
    ("par_rss_mib", "7. Peak RSS (VmHWM) of the mount process during 6", "MiB", "low"),
    ("seq_split4_mbps", "&emsp;1 by four connections at once (curl `--range`, as `pget -n 4`), logins included", "MB/s", "high"),
    ("remount_big_mbps", "10. Re-read of a {cached} file after unmount and mount (ftpsfs `disk_cache=`)", "MB/s", "high"),
    ("remount_small_s", "&emsp;then {small} files of 4–64 KiB", "s", "low"),
    ("remount_retr", "&emsp;RETR sent for both", "count", None),
    ("remount_mdtm", "&emsp;MDTM sent for both", "count", None),
]

# The write workloads, once per server ({srv}): the metric names end in _SERVER.
WRITE_ROWS = [
    ("wcp_mbps", "8. `cp` of {seq} into the mount, {srv}: until whole on the server", "MB/s", "high"),
    ("wcp_close_s", "&emsp;until `cp` returned", "s", "low"),
    ("wcp_cmds", "&emsp;FTP commands sent", "count", None),
    ("wcp_cpu_s", "&emsp;CPU time of the mount process", "s", "low"),
    ("wcp_rss_mib", "&emsp;peak RSS (VmHWM) of the mount process", "MiB", "low"),
    ("wsmall_s", "9. `rsync -a` of {small} files of 4–64 KiB into the mount, {srv}: until all are on the server", "s", "low"),
    ("wsmall_close_s", "&emsp;until `rsync` returned", "s", "low"),
    ("wsmall_cmds", "&emsp;FTP commands sent", "count", None),
    ("wsmall_rss_mib", "&emsp;peak RSS (VmHWM) of the mount process", "MiB", "low"),
]
SERVER_NAMES = {"vsftpd": "vsftpd", "proftpd": "ProFTPD"}


def write_rows(meta):
    rows = []
    for server in meta.get("write_servers", "").split():
        for metric, label, unit, better in WRITE_ROWS:
            rows.append((f"{metric}_{server}", label.replace("{srv}", SERVER_NAMES.get(server, server)), unit, better))
    return rows


def size_text(mib):
    mib = int(mib)
    return f"{mib >> 10} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"


def tree_text(value):
    """`tree/a00 21 1000` -> `tree/a00 (1,000 files, 21 dirs)`."""
    parts = value.split()
    if len(parts) != 3:
        return "the tree"
    return f"`{parts[0]}/` ({int(parts[2]):,} files, {int(parts[1]):,} dirs)"


def load(results_dir):
    meta = {}
    with open(os.path.join(results_dir, "meta.env")) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    # (latency, system, metric) -> run -> value; values of one run are summed. A figure
    # whose step failed is recorded as ERR and counted in ERRORS instead.
    runs = defaultdict(lambda: defaultdict(float))
    with open(os.path.join(results_dir, "results.tsv")) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5 or not parts[4]:
                continue
            lat, system, run, metric, value = parts
            if value == "ERR":
                ERRORS[(lat, system, metric)] += 1
                continue
            runs[(lat, system, metric)][run] += float(value)
    return meta, runs


ERRORS = defaultdict(int)


def median(runs, key):
    values = list(runs.get(key, {}).values())
    return statistics.median(values) if values else None


def fmt(value, unit):
    if value is None:
        return "—"
    if unit == "count":
        return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def table(meta, runs, lat, rows):
    names = {
        "seq": size_text(meta["seq_mib"]),
        "cached": size_text(meta["cached_mib"]),
        "par": size_text(meta["par_mib"]),
        "rand": f"{int(meta.get(f'rand_n_{lat}', '0')):,}",
        "small": f"{int(meta.get(f'small_n_{lat}', '0')):,}",
        "rand_s": meta.get("rand_max_s", "?"),
        "tree": tree_text(meta.get(f"tree_{lat}", "")),
    }
    metrics = {r[0] for r in rows}
    systems = [(s, h) for s, h in SYSTEMS
               if any(k[1] == s and k[0] == lat and k[2] in metrics for k in list(runs) + list(ERRORS))]
    if not systems:
        return ""
    ratios = [(s, h) for s, h in RATIOS if any(s == t for t, _ in systems)]
    head = ["Workload", "unit", "better"] + [h for _, h in systems]
    if any(s == "ftpsfs" for s, _ in systems):
        head += [h for _, h in ratios]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for metric, label, unit, better in rows:
        values = {s: median(runs, (lat, s, metric)) for s, _ in systems}
        if all(v is None for v in values.values()) and not any(ERRORS.get((lat, s, metric)) for s, _ in systems):
            continue
        cells = [label.format(**names), unit, {"high": "higher", "low": "lower", None: ""}[better]]
        for s, _ in systems:
            failed = ERRORS.get((lat, s, metric), 0)
            if failed and values[s] is None:
                cells.append(f"failed ({failed}×)")
            elif failed:
                cells.append(f"{fmt(values[s], unit)} ({failed}× failed)")
            else:
                cells.append(fmt(values[s], unit))
        if any(s == "ftpsfs" for s, _ in systems):
            for s, _ in ratios:
                cells.append(ratio(values.get("ftpsfs"), values.get(s)) if better else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def warm_runs(meta, runs, lat):
    """Each run's warm re-read next to how much of the file the page cache still held."""
    resident = runs.get((lat, "ftpsfs", "warm_resident_mib"), {})
    cmds = runs.get((lat, "ftpsfs", "warm_cmds"), {})
    if not resident:
        return ""
    size = int(meta["seq_mib"])
    whole = [r for r in cmds if resident.get(r, 0) >= size - 0.5]
    parts = []
    if whole:
        sent = ", ".join(f"{cmds[r]:.0f}" for r in sorted(whole))
        parts.append(f"{len(whole)} of {len(cmds)} run(s) with the whole file in the kernel's "
                     f"page cache sent {sent} command(s)")
    evicted = sorted(r for r in cmds if r not in whole)
    if evicted:
        each = ", ".join(f"{size - resident.get(r, 0):.1f} MiB evicted: {cmds[r]:.0f} commands"
                         for r in evicted)
        parts.append(f"in the others the kernel had evicted part of the file before it ({each})")
    return "; " + "; ".join(parts)


def checks(meta, runs, lat):
    """The mount issue's acceptance criteria, on this latency's medians."""
    m = lambda s, k: median(runs, (lat, s, k))  # noqa: E731
    out = []

    def check(ok, text):
        if ok is None:
            out.append(f"- n/a: {text}")
        else:
            out.append(f"- {'PASS' if ok else '**FAIL**'}: {text}")

    f, c = m("ftpsfs", "seq_mbps"), m("raw", "seq_mbps")
    if f is not None and c:
        check(f >= 0.8 * c, f"sequential `cp` at {f:.0f} MB/s is {f / c:.0%} of curl's {c:.0f} MB/s (needs ≥ 80%)")
    v = m("ftpsfs", "warm_cmds")
    if v is not None:
        check(v == 0, f"warm re-read (kernel page cache) sent {v:.0f} FTP commands (needs 0)"
                      f"{warm_runs(meta, runs, lat)}")
    v = m("ftpsfs", "dropped_cmds")
    if v is not None:
        check(v == 0, f"re-read after drop_caches of a file smaller than cache_size sent {v:.0f} FTP commands (needs 0)")
    v = m("ftpsfs", "dir5000_lists")
    if v is not None:
        check(v == 1, f"`find` over the 5,000-file directory sent {v:.0f} listing command(s) (needs exactly 1)")
    limit = int(meta["ftpsfs_cache_mib"]) + 64
    for key, what in (("seq_rss_mib", f"the {size_text(meta['seq_mib'])} sequential read"),
                      ("par_rss_mib", "the 4 concurrent reads")):
        v = m("ftpsfs", key)
        if v is not None:
            bigger = key == "par_rss_mib" or int(meta["seq_mib"]) > int(meta["ftpsfs_cache_mib"])
            note = "" if bigger else " (file not larger than the cache: --quick sizes)"
            check(v < limit, f"peak RSS during {what} is {v:.0f} MiB (needs < cache_size {meta['ftpsfs_cache_mib']} MiB + 64 MiB = {limit} MiB){note}")
    res, full = m("ftpsfs", "tls_resumed"), m("ftpsfs", "tls_full")
    if res is not None:
        check(full == 0, f"TLS on ftpsfs's data connections: {res:.0f} resumed, {full:.0f} full handshakes per run (median)")
    return "\n".join(out)


def write_checks(meta, runs, lat):
    """The read-write mount issue's targets, per server, on this latency's medians."""
    m = lambda s, k: median(runs, (lat, s, k))  # noqa: E731
    failed = lambda s, k: ERRORS.get((lat, s, k), 0)  # noqa: E731
    out = []

    def check(ok, text):
        out.append(f"- {'PASS' if ok else '**FAIL**'}: {text}")

    for server in meta.get("write_servers", "").split():
        name = SERVER_NAMES.get(server, server)
        wcp, wsmall = f"wcp_mbps_{server}", f"wsmall_s_{server}"
        f, c = m("ftpsfs", wcp), m("raw", wcp)
        if f is not None and c:
            check(f >= 0.9 * c, f"{name}: `cp` into the mount at {f:.0f} MB/s is {f / c:.2f}× `curl -T` ({c:.0f} MB/s; needs ≥ 0.9×)")
        r = m("rclone-writes", wcp)
        if f is not None and r:
            check(f >= 1.3 * r, f"{name}: `cp` is {f / r:.2f}× rclone's writes mode ({r:.0f} MB/s until whole on the server; needs ≥ 1.3×)")
        elif f is not None and failed("rclone-writes", wcp):
            out.append(f"- n/a: {name}: rclone's writes mode failed to upload in {failed('rclone-writes', wcp)} of {meta['runs']} run(s), so there is nothing to compare")
        f = m("ftpsfs", wsmall)
        rclones = {s: m(s, wsmall) for s in ("rclone-off", "rclone-writes") if m(s, wsmall)}
        if f is not None and rclones:
            best = min(rclones, key=rclones.get)
            check(f <= 0.5 * rclones[best],
                  f"{name}: `rsync -a` of the small files takes {f:.1f} s, {f / rclones[best]:.2f}× rclone's faster mode "
                  f"({best.replace('rclone-', 'cache ')}, {rclones[best]:.1f} s; needs ≤ 0.5×)")
        elif f is not None:
            out.append(f"- n/a: {name}: rclone failed the small-file upload in every run of both modes")
        wb, rw = m("ftpsfs-wb", wsmall), m("rclone-writes", wsmall)
        wb_ret, rw_ret = m("ftpsfs-wb", f"wsmall_close_s_{server}"), m("rclone-writes", f"wsmall_close_s_{server}")
        if wb is not None and rw:
            check(wb <= 0.5 * rw, f"{name}: `rsync -a` with `-o writeback`: all on the server in {wb:.1f} s, {wb / rw:.2f}× rclone's writes mode ({rw:.1f} s; needs ≤ 0.5×)")
        if wb_ret is not None and rw_ret:
            check(wb_ret <= 1.5 * rw_ret, f"{name}: `rsync -a` with `-o writeback` returned in {wb_ret:.2f} s, {wb_ret / rw_ret:.2f}× rclone's writes mode ({rw_ret:.2f} s; needs ≤ 1.5×)")
        for metric in (f"wcp_corrupt_{server}", f"wsmall_corrupt_{server}"):
            for system, _ in SYSTEMS:
                bad = runs.get((lat, system, metric))
                if bad:
                    out.append(f"- **FAIL**: {name}: {system}'s upload differed from its source in {len(bad)} run(s)")
        resumed = sum(m("ftpsfs", f"{w}_resumed_{server}") or 0 for w in ("wcp", "wsmall"))
        full = sum(m("ftpsfs", f"{w}_full_{server}") or 0 for w in ("wcp", "wsmall"))
        replaced = sum(m("ftpsfs", f"{w}_replaced_{server}") or 0 for w in ("wcp", "wsmall"))
        tls12 = sum(m("ftpsfs", f"{w}_tls12_{server}") or 0 for w in ("wcp", "wsmall"))
        if resumed or full:
            check(full == 0, f"{name}: ftpsfs's data connections in the write workloads: {resumed:.0f} resumed, {full:.0f} full "
                             f"handshakes; {replaced:.0f} control connections replaced ahead for lack of TLS 1.3 tickets, "
                             f"{tls12:.0f} opened on TLS 1.2 instead (per run, median)")
    return "\n".join(out)


def report(meta, runs):
    lats = sorted({k[0] for k in runs}, key=int)
    parts = []
    parts.append(f"Measured {meta['date']} with `scripts/bench.sh"
                 + (" --quick" if meta.get("quick") == "1" else "")
                 + f"`: every figure is the median of {meta['runs']} run(s)"
                 + (f"; the whole run took {int(meta['duration_s']) // 60} min {int(meta['duration_s']) % 60} s" if "duration_s" in meta else "")
                 + ".")
    parts.append("")
    parts.append("| machine | |\n|---|---|")
    for key, label in (("cpu", "CPU"), ("nproc", "nproc"), ("memory", "memory"), ("kernel", "kernel"),
                       ("os", "OS"), ("ftpsfs", "ftpsfs"), ("rustc", "rustc"), ("rclone", "rclone"),
                       ("curl", "curl"), ("vsftpd", "server"), ("proftpd", "server for writes"),
                       ("openssl", "OpenSSL"), ("fio", "fio"),
                       ("rsync", "rsync")):
        if key in meta:
            parts.append(f"| {label} | {meta[key]} |")
    parts.append("")
    if meta.get("damon", "off") != "off":
        parts.append(f"The kernel runs DAMON proactive reclaim ({meta['damon']}): it pages out page cache "
                     "that was read once, even with memory free, so part of a file read a few seconds "
                     "earlier may be gone from the kernel's cache at the warm re-read (2).")
        parts.append("")
    loads = [float(v) for k, v in meta.items() if k.startswith("load_")]
    if loads:
        busy = [k[5:].replace("_", " / ") for k, v in meta.items() if k.startswith("load_") and float(v) >= 1.5]
        parts.append(f"Load average (1 min) when each system's turn began: median {statistics.median(loads):.2f}, "
                     f"highest {max(loads):.2f}"
                     + (f"; 1.5 or more at {len(busy)} of {len(loads)} turns (RTT / run / system: {', '.join(busy[:6])}"
                        + (", ..." if len(busy) > 6 else "") + "), so other work shared the 2 cores there."
                        if busy else "."))
        parts.append("")
    for lat in lats:
        rtt = meta.get(f"rtt_{lat}", "")
        measured = re.search(r"rtt_ms=([0-9.]+)", rtt)
        where = "plain loopback, MTU 65536" if lat == "0" else f"{lat} ms added (NFQUEUE delay {int(lat) / 2:g} ms each way), MTU 1500"
        parts.append(f"### RTT {lat} ms: {where}")
        parts.append("")
        if measured:
            parts.append(f"Round trip measured with FTP NOOPs on the control connection: median {measured.group(1)} ms ({rtt}).")
            parts.append("")
        reads = table(meta, runs, lat, ROWS)
        if reads:
            parts.append(reads)
            parts.append("")
            c = checks(meta, runs, lat)
            if c:
                parts.append(f"Criteria of the mount issue at RTT {lat} ms:")
                parts.append("")
                parts.append(c)
                parts.append("")
        writes = table(meta, runs, lat, write_rows(meta))
        if writes:
            parts.append(f"Writes at RTT {lat} ms, on each server (TLS 1.3 on both; rclone on vsftpd with `--ftp-disable-tls13`, since it cannot upload there over TLS 1.3):")
            parts.append("")
            parts.append(writes)
            parts.append("")
            c = write_checks(meta, runs, lat)
            if c:
                parts.append(f"Criteria of the read-write mount issue at RTT {lat} ms:")
                parts.append("")
                parts.append(c)
                parts.append("")
    return "\n".join(parts).rstrip() + "\n"


TEMPLATE = """# Benchmarks

Produced by `sudo scripts/bench.sh` (see the comment at its top); the part between the
markers below is rewritten by each full run.

{begin}
{body}{end}
"""


def write_doc(path, body):
    if os.path.exists(path):
        text = open(path).read()
        if BEGIN in text and END in text:
            before = text.split(BEGIN, 1)[0]
            after = text.split(END, 1)[1]
            text = before + BEGIN + "\n" + body + END + after
        else:
            text = text.rstrip("\n") + "\n\n" + BEGIN + "\n" + body + END + "\n"
    else:
        text = TEMPLATE.format(begin=BEGIN, end=END, body=body)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main():
    args = sys.argv[1:]
    doc = None
    if "--doc" in args:
        i = args.index("--doc")
        doc = args[i + 1]
        del args[i:i + 2]
    meta, runs = load(args[0])
    body = report(meta, runs)
    sys.stdout.write(body)
    if doc:
        write_doc(doc, body)


if __name__ == "__main__":
    main()
