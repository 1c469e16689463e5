"""TLS (wss://) checks of a uringws echo server, with Python's `ssl` and `websockets`
(scripts/tls-interop.sh). Each command prints one line and exits 0 (check passed) or 1.

    python tls_client.py echo URL --ca CA.pem [--tls any|1.2|1.3] [--alpn] [--quick]
        websockets client over wss://: JSON text, 1 MiB binary, an empty text and an empty
        binary message, 50 small ones; every echo must be exact, then a clean close (1000).
        --tls forces the protocol version; --alpn offers ALPN "http/1.1" and requires the
        server to select it; --quick sends only a JSON text and 64 KiB of binary.
    python tls_client.py reject URL --ca CA.pem [--expect TEXT]
        the TLS handshake must fail certificate verification (the message must contain TEXT).
    python tls_client.py raw CHECK HOST PORT --ca CA.pem [--within S] [--handshake-timeout S]
        a hand-driven TLS client (ssl.SSLObject on memory BIOs over a plain socket):
          half-hello     half of a real ClientHello, then silence: closed within S seconds
          plain-http     "GET / HTTP/1.1" in clear text: closed within S seconds
          garbage        random bytes: closed within S seconds
          idle-after-tls TLS handshake, no HTTP request: closed within S seconds of it
          reset-mid-record  WebSocket handshake, a 1 MiB message not read back, half a TLS
                         record of the next one, then RST (SO_LINGER 0)
          dribble-hello  the ClientHello one byte per write, 2 ms apart: handshake completes,
                         an echo works
          close-notify   WebSocket close handshake: the server's close frame must be followed
                         by a TLS close_notify (what follows, FIN or not within 2 s, is reported)
          healthz        GET /healthz over TLS answers 200
    python tls_client.py serve --addr 127.0.0.1:PORT --tls-cert CHAIN --tls-key KEY
                               [--handshake-timeout S]
        the stand-in TLS echo server (websockets), for developing the checks without uringws
        TLS; prints "uringws echo listening on ADDR" on stderr like `uringws echo`; unknown
        options are ignored; a bad certificate or key is one line on stderr and exit 1.
"""

import argparse
import asyncio
import json
import os
import random
import socket
import ssl
import struct
import sys
import time

from websockets.asyncio.client import connect


def fail(msg):
    print("FAIL: %s" % msg, flush=True)
    sys.exit(1)


def client_context(ca, tls="any", alpn=False):
    ctx = ssl.create_default_context(cafile=ca)
    if tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif tls == "1.3":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    elif tls != "any":
        raise SystemExit("unknown --tls %r" % tls)
    if alpn:
        ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def random_bytes(n, seed=0x9E3779B9):
    return random.Random(seed).randbytes(n)


# --- echo over websockets ---------------------------------------------------------------------


async def echo(url, ca, tls, alpn, quick):
    ctx = client_context(ca, tls, alpn)
    if quick:
        sent = [json.dumps({"hello": "world", "n": [1, 2, 3]}), random_bytes(64 << 10)]
    else:
        sent = [json.dumps({"hello": "world", "n": [1, 2, 3], "text": "κόσμε"}),
                random_bytes(1 << 20), "", b""]
        sent += [json.dumps({"n": i, "text": "hello"}) for i in range(50)]
    t0 = time.monotonic()
    async with connect(url, ssl=ctx, proxy=None, max_size=64 << 20, open_timeout=10,
                       close_timeout=5) as ws:
        obj = ws.transport.get_extra_info("ssl_object")
        if obj is None:
            fail("no TLS on this connection")
        version, cipher, chosen = obj.version(), obj.cipher()[0], obj.selected_alpn_protocol()
        if tls == "1.2" and version != "TLSv1.2" or tls == "1.3" and version != "TLSv1.3":
            fail("negotiated %s with --tls %s" % (version, tls))
        if alpn and chosen != "http/1.1":
            fail("offered ALPN http/1.1, the server selected %r" % chosen)
        for m in sent:
            await ws.send(m)
        for i, m in enumerate(sent):
            got = await asyncio.wait_for(ws.recv(), 10)
            if type(got) is not type(m) or got != m:
                fail("echo %d differs: sent %s of %d, got %s of %d" % (
                    i, type(m).__name__, len(m), type(got).__name__, len(got)))
        t1 = time.monotonic()
    t2 = time.monotonic()
    if ws.close_code != 1000:
        fail("closed with %r %r after the echoes" % (ws.close_code, ws.close_reason))
    print("%d messages echoed over %s (%s), ALPN %s, %.2f s; close 1000 in %d ms" % (
        len(sent), version, cipher, chosen, t1 - t0, (t2 - t1) * 1000))


async def reject(url, ca, expect):
    ctx = client_context(ca)
    try:
        async with connect(url, ssl=ctx, proxy=None, open_timeout=10) as ws:
            await ws.close()
    except ssl.SSLCertVerificationError as e:
        msg = e.verify_message or str(e)
        if expect and expect not in msg:
            fail("verification failed, but with %r (expected %r)" % (msg, expect))
        print("the client refused the certificate: %s" % msg)
        return
    except Exception as e:  # noqa: BLE001 -- reported as the failure
        fail("%s: %s (expected a certificate verification failure)" % (type(e).__name__, e))
    fail("the connection succeeded; expected a certificate verification failure")


# --- hand-driven TLS --------------------------------------------------------------------------

class Closed(Exception):
    pass


def describe_records(data):
    """Names the TLS records in `data` (what a server sent before it closed)."""
    alerts = {0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac",
              22: "record_overflow", 40: "handshake_failure", 47: "illegal_parameter",
              50: "decode_error", 51: "decrypt_error", 70: "protocol_version",
              80: "internal_error", 86: "inappropriate_fallback", 109: "missing_extension",
              110: "unsupported_extension", 112: "unrecognized_name",
              120: "no_application_protocol"}
    out, i = [], 0
    while i + 5 <= len(data):
        ctype, ver, length = data[i], data[i + 1:i + 3], struct.unpack("!H", data[i + 3:i + 5])[0]
        body = data[i + 5:i + 5 + length]
        if ctype == 21 and len(body) == 2:
            out.append("alert %s %s" % ("fatal" if body[0] == 2 else "warning",
                                        alerts.get(body[1], str(body[1]))))
        elif ctype in (20, 21, 22, 23):
            out.append("TLS record type %d (%d bytes)" % (ctype, length))
        else:
            return "%d bytes, not TLS: %r" % (len(data), data[:60])
        i += 5 + length
    if i != len(data):
        out.append("%d more bytes" % (len(data) - i))
    return ", ".join(out) if out else "nothing"


def wait_raw_close(sock, limit):
    """Reads until the peer closes; returns (seconds, how, bytes received)."""
    t0 = time.monotonic()
    got = b""
    while True:
        left = limit - (time.monotonic() - t0)
        if left <= 0:
            return None, "still open", got
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except socket.timeout:
            return None, "still open", got
        except ConnectionResetError:
            return time.monotonic() - t0, "RST", got
        if not d:
            return time.monotonic() - t0, "FIN", got
        got += d


class TLS:
    """A TLS client on memory BIOs, so that the bytes on the wire stay under our control."""

    def __init__(self, host, port, ca, tls="any"):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ctx = client_context(ca, tls, alpn=True)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = self.ctx.wrap_bio(self.inc, self.out, server_hostname=None if _is_ip(host) else host)
        self.events = []  # how the server ended the connection

    def pending_out(self):
        return self.out.read()

    def flush(self):
        d = self.out.read()
        if d:
            self.sock.sendall(d)

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            self.events.append("RST")
            raise Closed("RST")
        if not d:
            self.events.append("FIN")
            self.inc.write_eof()
            return False
        self.inc.write(d)
        return True

    def handshake(self, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.obj.do_handshake()
                self.flush()
                return
            except ssl.SSLWantReadError:
                self.flush()
                if not self._fill(max(0.01, deadline - time.monotonic())):
                    raise Closed("FIN during the TLS handshake")

    def send(self, data):
        self.obj.write(data)
        self.flush()

    def recv(self, timeout=10):
        """Returns decrypted bytes; raises Closed with what ended the stream."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                d = self.obj.read(1 << 20)
                if d:
                    return d
                # SSLObject.read returns b"" once the peer's close_notify has been read
                self.events.append("close_notify")
                raise Closed("close_notify")
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self.events.append("close_notify")
                raise Closed("close_notify")
            except ssl.SSLEOFError:
                raise Closed("EOF without close_notify")
            except ssl.SSLError as e:
                self.events.append("TLS error %s" % e.reason)
                raise Closed("TLS error %s" % e.reason)
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("nothing within %s s" % timeout)
            self._fill(left)

    def recv_until(self, pred, timeout=10):
        buf = b""
        deadline = time.monotonic() + timeout
        while not pred(buf):
            buf += self.recv(max(0.01, deadline - time.monotonic()))
        return buf

    def close_events(self, timeout):
        """Reads until the server closes the TCP connection; returns (seconds, events)."""
        t0 = time.monotonic()
        try:
            while True:
                left = timeout - (time.monotonic() - t0)
                if left <= 0:
                    return None, self.events + ["still open"]
                try:
                    self.recv(left)
                except Closed:
                    if self.events and self.events[-1] in ("FIN", "RST"):
                        return time.monotonic() - t0, self.events
                    secs = time.monotonic() - t0
                    if "close_notify" in self.events:
                        # then FIN (or RST) on the raw socket, or a server that waits for ours
                        fin, how, _ = wait_raw_close(self.sock, 2.0)
                        self.events.append(
                            "%s %.2f s later" % (how, fin) if fin is not None
                            else "no FIN within 2 s (the server waits for the client to close)")
                    return secs, self.events
        except socket.timeout:
            return None, self.events + ["still open"]


def _is_ip(host):
    try:
        socket.inet_pton(socket.AF_INET, host)
        return True
    except OSError:
        return False


def ws_frame(opcode, payload, fin=True):
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + _mask(payload, mask)


def _mask(payload, mask):
    key = (mask * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(len(payload), "big")


def ws_handshake(t, host, port):
    t.send(("GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (host, port)).encode())
    resp = t.recv_until(lambda b: b"\r\n\r\n" in b)
    head, _, rest = resp.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        fail("WebSocket handshake over TLS: %r" % head[:200])
    return rest


def read_frame(t, buf, timeout=10):
    """Reads one unmasked server frame; returns (opcode, payload, rest of buffer)."""
    def need(n):
        nonlocal buf
        while len(buf) < n:
            buf += t.recv(timeout)
    need(2)
    op, n = buf[0] & 0x0F, buf[1] & 0x7F
    off = 2
    if n == 126:
        need(4)
        n, off = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        need(10)
        n, off = struct.unpack("!Q", buf[2:10])[0], 10
    need(off + n)
    return op, buf[off:off + n], buf[off + n:]


def raw(check, host, port, ca, within):
    if check in ("half-hello", "plain-http", "garbage"):
        sock = socket.create_connection((host, port), timeout=10)
        if check == "half-hello":
            ctx = client_context(ca, alpn=True)
            inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = ctx.wrap_bio(inc, out, server_hostname=None if _is_ip(host) else host)
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            hello = out.read()
            data = hello[:len(hello) // 2]
            what = "%d of the %d bytes of a ClientHello" % (len(data), len(hello))
        elif check == "plain-http":
            data = ("GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                    % (host, port)).encode()
            what = "a plain-text WebSocket upgrade request (%d bytes)" % len(data)
        else:
            data = bytearray(random_bytes(1024, seed=14))
            data[0] = 0x47  # never a TLS record type (20..24)
            data = bytes(data)
            what = "1024 random bytes"
        t0 = time.monotonic()
        sock.sendall(data)
        secs, how, got = wait_raw_close(sock, within + 5)
        total = time.monotonic() - t0
        sock.close()
        answer = describe_records(got) if got else "nothing"
        if secs is None or secs > within:
            fail("sent %s: not closed within %.1f s (%s after %.1f s; the server sent %s)" % (
                what, within, how, total, answer))
        print("sent %s: server closed (%s) after %.2f s (limit %.1f s); it sent %s" % (
            what, how, secs, within, answer))
        return

    if check == "dribble-hello":
        t = TLS(host, port, ca)
        try:
            t.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = t.out.read()
        for b in hello:
            t.sock.sendall(bytes([b]))
            time.sleep(0.002)
        t.handshake()
        rest = ws_handshake(t, host, port)
        t.send(ws_frame(1, b"dribbled"))
        op, payload, _ = read_frame(t, rest)
        if (op, payload) != (1, b"dribbled"):
            fail("echo after a dribbled ClientHello: opcode %d, %r" % (op, payload[:60]))
        print("ClientHello of %d bytes sent one byte per write: %s handshake, echo ok" % (
            len(hello), t.obj.version()))
        return

    if check == "idle-after-tls":
        t = TLS(host, port, ca)
        t.handshake()
        version = t.obj.version()
        secs, events = t.close_events(within + 5)
        if secs is None or secs > within:
            fail("TLS handshake done (%s), no request: not closed within %.1f s (%s)" % (
                version, within, ", ".join(events)))
        print("TLS handshake done (%s), no request: server closed after %.2f s (limit %.1f s): %s" % (
            version, secs, within, ", ".join(events)))
        return

    if check == "healthz":
        t = TLS(host, port, ca)
        t.handshake()
        t.send(("GET /healthz HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n" % (host, port)).encode())
        try:
            resp = t.recv_until(lambda b: b"\r\n\r\n" in b)
        except Closed as e:
            fail("GET /healthz over TLS: connection ended (%s) before a response" % e)
        status = resp.split(b"\r\n", 1)[0].decode("latin-1")
        if " 200" not in status:
            fail("GET /healthz over TLS: %s" % status)
        print("GET /healthz over %s: %s" % (t.obj.version(), status))
        return

    if check == "close-notify":
        t = TLS(host, port, ca)
        t.handshake()
        rest = ws_handshake(t, host, port)
        t.send(ws_frame(8, struct.pack("!H", 1000) + b"bye"))
        op, payload, rest = read_frame(t, rest)
        if op != 8:
            fail("expected the server's close frame, got opcode %d" % op)
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        version = t.obj.version()
        secs, events = t.close_events(within)
        if "close_notify" not in events:
            fail("%s: close frame %s, then %s%s: no TLS close_notify" % (
                version, code, ", ".join(events), "" if secs is None else " after %.2f s" % secs))
        print("%s: close frame %s, close_notify %.2f s later, then %s" % (
            version, code, secs, ", ".join(e for e in events if e != "close_notify")))
        return

    if check == "reset-mid-record":
        t = TLS(host, port, ca)
        t.handshake()
        rest = ws_handshake(t, host, port)
        t.send(ws_frame(1, b"before the reset"))
        op, payload, rest = read_frame(t, rest)
        if payload != b"before the reset":
            fail("echo before the reset differs: %r" % payload[:60])
        t.send(ws_frame(2, random_bytes(1 << 20)))  # echoed back, never read
        t.obj.write(ws_frame(2, random_bytes(100_000, seed=5)))
        records = t.pending_out()
        cut = 16384 + 5 + 8000  # one whole record and about half of the next
        t.sock.sendall(records[:cut])
        time.sleep(0.2)
        t.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t.sock.close()
        print("sent 1 MiB (echo unread), then %d of the %d bytes of the next message's records, "
              "then RST" % (cut, len(records)))
        return

    raise SystemExit("unknown raw check %r" % check)


# --- stand-in server --------------------------------------------------------------------------


async def serve(addr, cert, key, handshake_timeout):
    from http import HTTPStatus
    from websockets.asyncio.server import serve as ws_serve

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        print("error: TLS certificate %s / key %s: %s" % (cert, key, e), file=sys.stderr)
        sys.exit(1)

    async def echo_handler(ws):
        async for message in ws:
            await ws.send(message)

    def process_request(conn, request):
        if request.path == "/healthz":
            return conn.respond(HTTPStatus.OK, "ok\n")
        return None

    host, port = addr.rsplit(":", 1)
    async with ws_serve(echo_handler, host, int(port), ssl=ctx, max_size=64 << 20,
                        compression=None, open_timeout=handshake_timeout,
                        process_request=process_request):
        print("uringws echo listening on %s (stand-in: Python websockets over TLS)" % addr,
              file=sys.stderr, flush=True)
        await asyncio.Future()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo")
    e.add_argument("url")
    e.add_argument("--ca", required=True)
    e.add_argument("--tls", default="any", choices=["any", "1.2", "1.3"])
    e.add_argument("--alpn", action="store_true")
    e.add_argument("--quick", action="store_true")
    r = sub.add_parser("reject")
    r.add_argument("url")
    r.add_argument("--ca", required=True)
    r.add_argument("--expect", default="")
    w = sub.add_parser("raw")
    w.add_argument("check")
    w.add_argument("host")
    w.add_argument("port", type=int)
    w.add_argument("--ca", required=True)
    w.add_argument("--within", type=float, default=1.0)
    s = sub.add_parser("serve")
    s.add_argument("--addr", required=True)
    s.add_argument("--tls-cert", required=True)
    s.add_argument("--tls-key", required=True)
    s.add_argument("--handshake-timeout", type=float, default=10)
    a, unknown = p.parse_known_args()
    if unknown and a.cmd != "serve":
        p.error("unrecognized arguments: %s" % " ".join(unknown))

    if a.cmd == "serve":
        try:
            asyncio.run(serve(a.addr, a.tls_cert, a.tls_key, a.handshake_timeout))
        except KeyboardInterrupt:
            pass
        return
    try:
        if a.cmd == "echo":
            asyncio.run(asyncio.wait_for(echo(a.url, a.ca, a.tls, a.alpn, a.quick), 30))
        elif a.cmd == "reject":
            asyncio.run(asyncio.wait_for(reject(a.url, a.ca, a.expect), 30))
        else:
            raw(a.check, a.host, a.port, a.ca, a.within)
    except SystemExit:
        raise
    except BaseException as ex:  # noqa: BLE001 -- one line, not a traceback
        fail("%s: %s" % (type(ex).__name__, ex or getattr(ex, "strerror", None) or repr(ex)))


if __name__ == "__main__":
    main()
