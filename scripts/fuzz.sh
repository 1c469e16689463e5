#!/usr/bin/env bash
# Run every cargo-fuzz target for SECONDS each (default 60), one after the other.
#
# Usage: scripts/fuzz.sh [SECONDS]
#
# Needs the nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`). Each target starts from fuzz/corpus/<target> (the committed
# seed-* files plus whatever earlier runs added there). A crash leaves its input in
# fuzz/artifacts/<target>/ and makes the script exit non-zero after the remaining targets ran;
# reproduce it with `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`.
#
# Environment:
#   FUZZ_TARGETS   space-separated targets to run (default: all, from `cargo fuzz list`)
#   FUZZ_RSS_MB    libFuzzer -rss_limit_mb (default 2048)
set -euo pipefail

SECONDS_EACH="${1:-60}"
if ! [[ "$SECONDS_EACH" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS]" >&2
    exit 2
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "error: cargo-fuzz with a nightly toolchain is required" >&2
    echo "  rustup toolchain install nightly && cargo install cargo-fuzz" >&2
    exit 2
fi

TARGETS="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
cargo +nightly fuzz build

failed=()
for target in $TARGETS; do
    echo "=== fuzz $target for ${SECONDS_EACH}s"
    mkdir -p "fuzz/corpus/$target"
    if cargo +nightly fuzz run "$target" -- \
        -max_total_time="$SECONDS_EACH" \
        -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
        -print_final_stats=1; then
        echo "=== $target: no crash"
    else
        echo "=== $target: CRASH (see fuzz/artifacts/$target/)" >&2
        failed+=("$target")
    fi
done

if ((${#failed[@]})); then
    echo "crashing targets: ${failed[*]}" >&2
    exit 1
fi
echo "all targets ran ${SECONDS_EACH}s without a crash"
