#!/usr/bin/env bash
# Runs every test of ftpsfs on a fresh Debian machine (as root): installs what is
# missing, starts the test FTPS servers on 127.0.0.1, checks formatting and lints,
# runs the whole suite, and stops the servers it started.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash scripts/servers.sh start
trap 'bash scripts/servers.sh stop' EXIT

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked
else
    cargo test --locked
fi
