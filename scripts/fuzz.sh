#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ (or the ones named) for SECONDS
# seconds each, with the nightly toolchain, and prints what each did.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET ...]     # default: 60 s, all targets
#
# Needs `cargo install cargo-fuzz` and a nightly toolchain
# (`rustup toolchain install nightly`). The corpus grows in
# fuzz/corpus/TARGET (seeded from fuzz/seeds/TARGET); a failing input is
# saved in fuzz/artifacts/TARGET and the script exits non-zero. Builds go to
# $CARGO_TARGET_DIR/fuzz when CARGO_TARGET_DIR is set, else fuzz/target.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET ...] (SECONDS a positive whole number)" >&2
    exit 2
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: run \`cargo install cargo-fuzz\`" >&2
    exit 1
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "the nightly toolchain is missing: run \`rustup toolchain install nightly\`" >&2
    exit 1
fi

target_dir="${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz}"
target_dir="${target_dir:-fuzz/target}"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

status=0
summary=()
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    log="$(mktemp)"
    echo "== $target: ${seconds} s"
    started=$(date +%s)
    if cargo +nightly fuzz run --target-dir "$target_dir" "$target" "$corpus" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -dict=fuzz/dict/routes.dict -print_final_stats=1 >"$log" 2>&1; then
        result="no failure"
    else
        result="FAILED (input in fuzz/artifacts/$target)"
        status=1
        tail -n 40 "$log"
    fi
    elapsed=$(($(date +%s) - started))
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
    coverage=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+' || echo "?")
    units=$(find "$corpus" -type f | wc -l)
    summary+=("$target: $result; $runs runs in ${elapsed} s (build included), coverage $coverage edges, corpus $units inputs")
    rm -f "$log"
done

echo
printf '%s\n' "${summary[@]}"
exit "$status"
