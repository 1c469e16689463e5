"""Python `websockets` as an independent peer of uringws, with permessage-deflate.

    python peer.py server MODE      echo server on 127.0.0.1, a free port; prints "PORT N"
    python peer.py client URL MODE  echo check against a server; prints one line, exit 0 or 1

MODE: "default" (websockets' own permessage-deflate settings: its client offers
client_max_window_bits, its server asks for 12-bit windows) or "no-context" (no context
takeover either way).
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)


def extensions(role, mode):
    if mode == "default":
        return None  # compression="deflate", the library's defaults
    if mode != "no-context":
        raise SystemExit("unknown mode %r" % mode)
    factory = ServerPerMessageDeflateFactory if role == "server" else ClientPerMessageDeflateFactory
    return [factory(server_no_context_takeover=True, client_no_context_takeover=True)]


def json_like(size):
    rows, n, i = [], 2, 0
    while n < size:
        r = json.dumps({"id": i, "user": "user-%d" % (i % 97), "text": "hello room"})
        rows.append(r)
        n += len(r) + 1
        i += 1
    return "[" + ",".join(rows) + "]"


def random_bytes(n):
    out, x = bytearray(n), 0x9E3779B9
    for i in range(n):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out[i] = x & 0xFF
    return bytes(out)


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def server(mode):
    kwargs = {"max_size": 64 << 20}
    ext = extensions("server", mode)
    if ext is not None:
        kwargs.update(compression=None, extensions=ext)
    async with serve(echo, "127.0.0.1", 0, **kwargs) as s:
        print("PORT %d" % s.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


async def client(url, mode):
    kwargs = {"max_size": 64 << 20}
    ext = extensions("client", mode)
    if ext is not None:
        kwargs.update(compression=None, extensions=ext)
    sent = [json_like(1 << 20), random_bytes(1 << 20), ""]
    sent += [json.dumps({"n": i, "text": "hello"}) for i in range(50)]
    async with connect(url, **kwargs) as ws:
        agreed = [e.name for e in ws.protocol.extensions]
        if agreed != ["permessage-deflate"]:
            raise SystemExit("python client: extension not agreed: %r" % agreed)
        for m in sent:
            await ws.send(m)
        for i, m in enumerate(sent):
            got = await ws.recv()
            if got != m:
                raise SystemExit("python client: echo %d differs" % i)
        params = vars(ws.protocol.extensions[0])
        print("python websockets client (%s): %d messages echoed, %s" % (
            mode, len(sent),
            {k: v for k, v in params.items() if "takeover" in k or "bits" in k}))


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "server":
        asyncio.run(server(sys.argv[2]))
    elif role == "client":
        asyncio.run(asyncio.wait_for(client(sys.argv[2], sys.argv[3]), 30))
    else:
        raise SystemExit(__doc__)
