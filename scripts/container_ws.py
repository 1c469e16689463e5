#!/usr/bin/env python3
"""Tiny stdlib-only WebSocket/HTTP client for scripts/container.sh.

    container_ws.py health PORT            GET /healthz, expect 200
    container_ws.py echo PORT              handshake, one masked text frame, expect its echo,
                                           then a clean close (1000)
    container_ws.py hold PORT READY_FILE   handshake and one echo, touch READY_FILE, then wait
                                           for the server's close frame; expect code 1001

Every socket operation has a timeout (UWS_WS_TIMEOUT seconds, default 30). With UWS_WS_CA set
to a PEM file, connections are TLS (wss://) to the name localhost, trusting that CA. Prints one
line of what happened; exit 0 on success, 1 on failure.
"""

import base64
import hashlib
import os
import socket
import ssl
import struct
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TIMEOUT = float(os.environ.get("UWS_WS_TIMEOUT", "30"))
CA = os.environ.get("UWS_WS_CA")


class Fail(Exception):
    pass


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.settimeout(TIMEOUT)
    if CA:
        s = ssl.create_default_context(cafile=CA).wrap_socket(s, server_hostname="localhost")
    return s


def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise Fail(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_head(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(1)
        if not chunk:
            raise Fail(f"connection closed during the HTTP head: {buf!r}")
        buf += chunk
        if len(buf) > 16384:
            raise Fail("HTTP head over 16 KiB")
    return buf.decode("latin-1")


def handshake(port):
    s = connect(port)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (port, key)
        ).encode()
    )
    head = read_head(s)
    status = head.split("\r\n", 1)[0]
    if not status.startswith("HTTP/1.1 101"):
        raise Fail(f"handshake answered {status!r}")
    want = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    headers = {}
    for line in head.split("\r\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get("sec-websocket-accept") != want:
        raise Fail(f"bad Sec-WebSocket-Accept {headers.get('sec-websocket-accept')!r}")
    return s


def send_frame(s, opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    s.sendall(head + mask + masked)


def read_frame(s):
    b0, b1 = read_exact(s, 2)
    if b1 & 0x80:
        raise Fail("server frame is masked")
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", read_exact(s, 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", read_exact(s, 8))
    return b0 & 0x80 != 0, b0 & 0x0F, read_exact(s, n)


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def echo_once(s, text):
    send_frame(s, 0x1, text.encode())
    fin, op, payload = read_frame(s)
    if not fin or op != 0x1 or payload != text.encode():
        raise Fail(f"echo mismatch: fin={fin} opcode={op} payload={payload[:80]!r}")


def cmd_health(port):
    s = connect(port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    head = read_head(s)
    status = head.split("\r\n", 1)[0]
    if not status.startswith("HTTP/1.1 200"):
        raise Fail(f"/healthz answered {status!r}")
    return f"GET /healthz: {status}"


def cmd_echo(port):
    s = handshake(port)
    text = "hello from scripts/container.sh"
    echo_once(s, text)
    send_frame(s, 0x8, struct.pack("!H", 1000))
    _, op, payload = read_frame(s)
    if op != 0x8 or close_code(payload) != 1000:
        raise Fail(f"close answered with opcode={op} payload={payload!r}")
    tls = f" over {s.version()} {s.cipher()[0]}" if CA else ""
    return f"101 Switching Protocols{tls}, text echoed ({len(text)} bytes), close 1000 answered"


def cmd_hold(port, ready_file):
    s = handshake(port)
    echo_once(s, "before shutdown")
    with open(ready_file, "w") as f:
        f.write("ready\n")
    while True:
        _, op, payload = read_frame(s)
        if op == 0x8:
            break
        if op == 0x9:  # ping: answer it
            send_frame(s, 0xA, payload)
    code = close_code(payload)
    reason = payload[2:].decode("utf-8", "replace")
    try:  # complete the closing handshake, then expect EOF
        send_frame(s, 0x8, payload[:2])
        s.recv(1)
    except OSError:
        pass
    if code != 1001:
        raise Fail(f"server closed with code {code} {reason!r}, expected 1001")
    return f"server sent close {code} {reason!r}"


def main():
    try:
        cmd, port = sys.argv[1], int(sys.argv[2])
        if cmd == "health":
            msg = cmd_health(port)
        elif cmd == "echo":
            msg = cmd_echo(port)
        elif cmd == "hold":
            msg = cmd_hold(port, sys.argv[3])
        else:
            raise Fail(f"unknown command {cmd!r}")
    except (Fail, OSError, IndexError, ValueError) as e:
        print(f"container_ws {' '.join(sys.argv[1:2])}: {type(e).__name__}: {e}")
        return 1
    print(msg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
