#!/usr/bin/env python3
"""A minimal FTPS client for the benchmark's raw limit where curl is no good.

    ftp-raw.py files HOST PORT USER PASSWORD_FILE CA_FILE LIST_FILE DEST_DIR
    ftp-raw.py list  HOST PORT USER PASSWORD_FILE CA_FILE LIST_FILE
    ftp-raw.py rand  HOST PORT USER PASSWORD_FILE CA_FILE PATH SIZE COUNT [MAX_SECONDS]
    ftp-raw.py put   HOST PORT USER PASSWORD_FILE CA_FILE LIST_FILE SOURCE_DIR DEST_DIR

`files`: downloads every path listed in LIST_FILE (one per line, relative to the login
directory) into DEST_DIR, one after another.
`list`: LIST of every directory in LIST_FILE, one after another (the listing is read and
dropped; the client knows the tree, so it needs no discovery).
`rand`: COUNT reads of 4 KiB at random 4 KiB-aligned offsets below SIZE in PATH (REST,
RETR, read 4 KiB, close the data connection, collect the server's reply), or as many as
fit in MAX_SECONDS.
`put`: uploads every path listed in LIST_FILE (relative to SOURCE_DIR) to the same path
under DEST_DIR on the server, one after another, making the directories first (MKD). Each
upload ends with TLS close_notify, then the server's 226 (a bare TCP close makes vsftpd
answer 426).

All use one control connection (explicit TLS) and a data connection per transfer that
resumes the control connection's TLS session (vsftpd's require_ssl_reuse), with
TCP_NODELAY. Round trips are saved where the protocol allows: REST and RETR/LIST go out
together, the data connection's TLS handshake starts at the same time, and the key share
is the server's group (P-256 for vsftpd 3.0.3), so there is no HelloRetryRequest. That is
the least an FTPS client must wait for in these workloads, a floor for the mounts. Prints
one line: `seconds=S ops=N`, the time counted from after the login.

curl is not used for these: it closes its control connection after every ranged RETR (a
new login per random read), and on back-to-back transfers it stalls up to 0.2 s each on
vsftpd (measured on loopback: 2,000 small files in 484 s, 211 listings in 1.3 s but 51 s
at 20 ms RTT).
"""
import random
import socket
import ssl
import sys
import time


class Client:
    def __init__(self, host, port, user, password, ca_file):
        self.host = host
        self.context = ssl.create_default_context(cafile=ca_file)
        # vsftpd 3.0.3 (Debian) offers only P-256: a key share for it avoids a
        # HelloRetryRequest, one round trip, on every data connection.
        self.context.set_ecdh_curve("prime256v1")
        raw = socket.create_connection((host, port), timeout=60)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = raw.makefile("rb")
        self.expect(self.reply(), "220")
        raw.sendall(b"AUTH TLS\r\n")
        self.expect(self.reply(), "234")
        self.file = None
        self.sock = self.context.wrap_socket(raw, server_hostname=host)
        self.file = self.sock.makefile("rb")
        self.command(f"USER {user}", "331")
        self.command(f"PASS {password}", "230")
        self.command("PBSZ 0", "200")
        self.command("PROT P", "200")
        self.command("TYPE I", "200")

    def reply(self):
        line = self.file.readline().decode("utf-8", "replace")
        if not line:
            raise RuntimeError("control connection closed")
        text = line
        if line[3:4] == "-":
            code = line[:3]
            while True:
                line = self.file.readline().decode("utf-8", "replace")
                text += line
                if line[:3] == code and line[3:4] == " ":
                    break
        return text

    @staticmethod
    def expect(reply, *codes):
        if not reply[:3] in codes:
            raise RuntimeError(f"unexpected reply: {reply.strip()}")
        return reply

    def send(self, line):
        self.sock.sendall(line.encode() + b"\r\n")

    def command(self, line, *codes):
        self.send(line)
        return self.expect(self.reply(), *codes)

    def data_connection(self):
        reply = self.command("EPSV", "229")
        port = int(reply.split("(", 1)[1].split("|")[3])
        raw = socket.create_connection((self.host, port), timeout=60)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return raw

    def transfer(self, commands):
        """Opens a data connection for the last of COMMANDS (sent together) and returns it
        once TLS is up and the server has answered all of them."""
        raw = self.data_connection()
        self.sock.sendall("".join(c + "\r\n" for c in commands).encode())
        # The server accepts the data connection on RETR/LIST, says 150, then does TLS;
        # the ClientHello is already waiting for it.
        data = self.context.wrap_socket(
            raw, server_hostname=self.host, session=self.sock.session, do_handshake_on_connect=False
        )
        data.do_handshake()
        for command in commands[:-1]:
            self.expect(self.reply(), "350")
        self.expect(self.reply(), "150", "125")
        return data

    def retr(self, path, out):
        data = self.transfer([f"RETR {path}"])
        while True:
            chunk = data.recv(1 << 16)
            if not chunk:
                break
            out.write(chunk)
        data.close()
        self.expect(self.reply(), "226")

    def list(self, path):
        data = self.transfer([f"LIST {path}"])
        n = 0
        while True:
            chunk = data.recv(1 << 16)
            if not chunk:
                break
            n += len(chunk)
        data.close()
        self.expect(self.reply(), "226")
        return n

    def read_at(self, path, offset, length):
        data = self.transfer([f"REST {offset}", f"RETR {path}"])
        got = 0
        while got < length:
            chunk = data.recv(length - got)
            if not chunk:
                break
            got += len(chunk)
        # Closing with unread data resets the connection: vsftpd stops at once and answers
        # 426 (or 226 if it had sent everything).
        data.close()
        self.expect(self.reply(), "426", "226", "451")
        if got != length:
            raise RuntimeError(f"short read at {offset}: {got} bytes")

    def stor(self, path, source):
        data = self.transfer([f"STOR {path}"])
        with open(source, "rb") as f:
            while True:
                chunk = f.read(1 << 16)
                if not chunk:
                    break
                data.sendall(chunk)
        data.unwrap().close()
        self.expect(self.reply(), "226", "250")

    def quit(self):
        try:
            self.command("QUIT", "221")
        except Exception:
            pass


def main():
    mode, host, port, user, password_file, ca_file = sys.argv[1:7]
    with open(password_file) as f:
        password = f.readline().rstrip("\n")
    client = Client(host, int(port), user, password, ca_file)
    # The mounts are logged in before their workloads start: so is this.
    start = time.perf_counter()
    ops = 0
    if mode == "files":
        list_file, dest = sys.argv[7:9]
        import os

        with open(list_file) as f:
            paths = [line.rstrip("\n") for line in f if line.strip()]
        for path in paths:
            target = os.path.join(dest, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as out:
                client.retr(path, out)
            ops += 1
    elif mode == "list":
        with open(sys.argv[7]) as f:
            paths = [line.rstrip("\n") for line in f if line.strip()]
        for path in paths:
            client.list(path)
            ops += 1
    elif mode == "rand":
        path, size, count = sys.argv[7], int(sys.argv[8]), int(sys.argv[9])
        deadline = start + float(sys.argv[10]) if len(sys.argv) > 10 else float("inf")
        rng = random.Random(4096)
        for _ in range(count):
            client.read_at(path, rng.randrange(size // 4096) * 4096, 4096)
            ops += 1
            if time.perf_counter() > deadline:
                break
    elif mode == "put":
        import os

        list_file, source, dest = sys.argv[7:10]
        with open(list_file) as f:
            paths = [line.rstrip("\n") for line in f if line.strip()]
        made = set()
        for path in paths:
            parts = os.path.dirname(path).split("/") if os.path.dirname(path) else []
            for i in range(len(parts) + 1):
                d = "/".join([dest] + parts[:i])
                if d not in made:
                    client.command(f"MKD {d}", "257", "550", "521")
                    made.add(d)
            client.stor(f"{dest}/{path}", os.path.join(source, path))
            ops += 1
    else:
        raise SystemExit(f"unknown mode {mode}")
    client.quit()
    print(f"seconds={time.perf_counter() - start:.4f} ops={ops}")


if __name__ == "__main__":
    main()
