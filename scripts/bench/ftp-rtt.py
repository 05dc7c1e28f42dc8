#!/usr/bin/env python3
"""Measures the round-trip time to an FTPS server with timed NOOP commands.

    ftp-rtt.py HOST PORT USER PASSWORD_FILE CA_FILE [COUNT]

Logs in over explicit TLS, sends COUNT (default 20) NOOPs one after another, and prints
one line: `rtt_ms=MEDIAN min_ms=MIN max_ms=MAX login_ms=LOGIN`. A NOOP is one request and
one reply on the control connection, so its time is one round trip plus the server's
(tiny) work.
"""
import ftplib
import ssl
import statistics
import sys
import time


def main():
    host, port, user, password_file, ca_file = sys.argv[1:6]
    count = int(sys.argv[6]) if len(sys.argv) > 6 else 20
    with open(password_file) as f:
        password = f.readline().rstrip("\n")
    context = ssl.create_default_context(cafile=ca_file)
    start = time.perf_counter()
    ftp = ftplib.FTP_TLS(context=context, timeout=30)
    ftp.connect(host, int(port))
    ftp.login(user, password)
    login_ms = (time.perf_counter() - start) * 1000
    times = []
    for _ in range(count):
        t = time.perf_counter()
        ftp.voidcmd("NOOP")
        times.append((time.perf_counter() - t) * 1000)
    ftp.quit()
    print(
        f"rtt_ms={statistics.median(times):.2f} min_ms={min(times):.2f} "
        f"max_ms={max(times):.2f} login_ms={login_ms:.1f}"
    )


if __name__ == "__main__":
    main()
