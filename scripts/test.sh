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

# The demo, as a newcomer runs it: the lines it promises (it restarts the servers and
# stops them again, so it runs last).
demo_dir=$(mktemp -d /tmp/ftpsfs-demo-test.XXXXXX)
demo=$(bash scripts/demo.sh "$demo_dir" 2>&1) || { echo "$demo"; echo "test.sh: scripts/demo.sh failed" >&2; exit 1; }
for promised in "is mounted, read-write" "on the server's disk: identical" \
    "OK: 5 of 5 data connections resumed" "522 SSL connection failed: session reuse required" \
    "Unmount and stop the servers"; do
    grep -qF "$promised" <<<"$demo" || { echo "$demo"; echo "test.sh: the demo no longer says: $promised" >&2; exit 1; }
done
stopped=$(bash scripts/demo.sh stop "$demo_dir" 2>&1) || { echo "$stopped"; exit 1; }
grep -qF "unmounted $demo_dir" <<<"$stopped" || { echo "$stopped"; echo "test.sh: demo.sh stop did not unmount" >&2; exit 1; }
rmdir "$demo_dir"
echo "test.sh: the demo works as README.md says"
