#!/usr/bin/env bash
# The whole test suite: unit, property, integration and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --all-targets
cargo test --locked --doc
