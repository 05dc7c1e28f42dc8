#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (not part of CI): the reply, EPSV/PASV, MLSD,
# LIST and URL parsers. A crash is saved under fuzz/artifacts/TARGET/; turn each one into
# a regression test next to the parser's unit tests, then fix the parser.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 60 s, all targets)
#
# cargo-fuzz needs nightly compiler flags (-Zsanitizer); this machine has one stable
# toolchain, so RUSTC_BOOTSTRAP=1 unlocks them for the fuzz build only.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(reply reply_order passive mlsd list url)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/corpus
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    mkdir -p "$corpus"
    # Seed the listing and reply corpora with the captured real-server transcripts.
    case $target in
    mlsd) cp tests/data/transcripts/*mlsd*.txt "$corpus"/ 2>/dev/null || true ;;
    list) cp tests/data/transcripts/*list*.txt "$corpus"/ 2>/dev/null || true ;;
    reply) cp tests/data/transcripts/*feat*.txt tests/data/transcripts/*session*.txt "$corpus"/ 2>/dev/null || true ;;
    esac
    echo "== fuzzing $target for ${seconds}s"
    cargo fuzz run "$target" "$corpus" -- -max_total_time="$seconds" -max_len=65536
done
echo "fuzz.sh: no crash in ${targets[*]}"
