#!/usr/bin/env bash
# Runs the hello-world client against the hello-world server and checks what it prints; then
# stops the server with SIGTERM and checks the client's one-line failure ("refused") when
# nothing listens.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/examples
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
"$BIN/hello_server" "127.0.0.1:$PORT" > target/hello_server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
out="$(timeout 20 "$BIN/hello_client" "ws://127.0.0.1:$PORT/")"
echo "$out"
[[ "$out" == "received: Hello, World!" ]] || { echo "unexpected output from hello_client" >&2; exit 1; }
kill $SERVER
wait $SERVER 2>/dev/null || true
status=0
err="$(timeout 20 "$BIN/hello_client" "ws://127.0.0.1:$PORT/" 2>&1)" || status=$?
echo "$err"
[[ $status -ne 0 && $(printf '%s\n' "$err" | wc -l) -eq 1 ]] || { echo "hello_client should fail with one line" >&2; exit 1; }
# The server stopped gracefully on SIGTERM and closed its listening socket: refused, not reset.
[[ $err == *"refused"* ]] || { echo "after the server stopped, its port should refuse connections" >&2; exit 1; }
echo "hello: 2 passed, 0 failed"
