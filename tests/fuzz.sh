#!/usr/bin/env bash
# The fuzz targets (fuzz/fuzz_targets): each replays the inputs that once broke it
# (fuzz/regressions/TARGET), then runs for FUZZ_SECS seconds (default 20) from its corpus
# (fuzz/corpus/TARGET, which keeps what it finds). Any crash, panic or hang fails the script,
# and libFuzzer leaves the input in fuzz/artifacts/TARGET.
#   FUZZ_SECS=600 tests/fuzz.sh [TARGET...]   # a long run
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${FUZZ_SECS:-20}
# Coverage without a sanitizer: it builds on the stable toolchain.
flags=(--sanitizer none -O)
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
cargo fuzz build "${flags[@]}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    if [ -d "regressions/$target" ]; then
        cargo fuzz run "${flags[@]}" "$target" "regressions/$target" -- -runs=0
    fi
    started=$(date +%s)
    cargo fuzz run "${flags[@]}" "$target" "corpus/$target" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        2>"corpus/.$target.log" || { tail -n 40 "corpus/.$target.log" >&2; exit 1; }
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "corpus/.$target.log" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz: $target: $runs runs in $(( $(date +%s) - started )) s, no crash"
    rm -f "corpus/.$target.log"
done
