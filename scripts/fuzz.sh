#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS_PER_TARGET seconds each (default
# 30), one after the other on one core, and prints executions, executions per second
# and crashes per target. Seeds come from fuzz/corpus/<target>/ (read only); inputs
# libFuzzer finds go to fuzz/work/<target>/, crashes to fuzz/artifacts/<target>/.
# FUZZ_SANITIZER picks cargo-fuzz's sanitizer: `none` by default, since vprov-core
# forbids unsafe code and its parsers are pure Rust (panics, hangs and runaway memory
# are what there is to find, and libFuzzer catches those without AddressSanitizer, at
# several times the executions per second); `address` checks the C under the crates too.
# Exits 0 (skipped) without the nightly toolchain or cargo-fuzz; 1 if a target
# crashed, hung or did not build.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
set -uo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(hello wsman_reply http_response setupbin config)

if ! cargo +nightly --version >/dev/null 2>&1 || ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: skipped: needs the nightly toolchain and cargo-fuzz" \
        "(rustup toolchain install nightly; cargo install cargo-fuzz)"
    exit 0
fi

failed=0
printf '%-14s %14s %10s %8s  %s\n' target executions execs/s seconds result
for target in "${targets[@]}"; do
    mkdir -p "work/$target"
    log="work/$target.log"
    start=$SECONDS
    # -timeout: one input taking 10 s is a hang (a device request may take 30 s in all).
    cargo +nightly fuzz run --sanitizer "${FUZZ_SANITIZER:-none}" "$target" "work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1
    status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    found=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log")
    if [ "$status" -eq 0 ] && [ -n "$execs" ]; then
        result="0 crashes"
    elif [ -n "$found" ]; then
        result="CRASH: $(grep -m1 -E '^(==[0-9]+== ?ERROR|thread .* panicked|==[0-9]+==ERROR)' "$log" || true) -> $found"
        failed=1
    else
        result="FAILED (exit $status), see fuzz/$log"
        failed=1
    fi
    printf '%-14s %14s %10s %8s  %s\n' "$target" "${execs:--}" "${rate:--}" "$((SECONDS - start))" "$result"
done
exit "$failed"
