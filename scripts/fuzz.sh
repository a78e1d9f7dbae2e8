#!/usr/bin/env bash
# Builds every cargo-fuzz target on stable (-s none: sanitizers need nightly) and
# runs each for the given number of seconds (default 60). A crash fails the run.
# Usage: bash scripts/fuzz.sh [SECONDS]      (0 = skip)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
if [ "$secs" = "0" ]; then echo "fuzz: skipped"; exit 0; fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz >/dev/null
fi

targets=$(cd fuzz && cargo fuzz list)
if [ -z "$targets" ]; then echo "fuzz: no targets"; exit 0; fi
cd fuzz
cargo fuzz build -s none -O >/dev/null
for t in $targets; do
    mkdir -p "corpus/$t"
    # Checked-in seeds (inputs random bytes rarely reach, e.g. an ICMPv6
    # Packet Too Big quoting TCP) join the corpus.
    if [ -d "seeds/$t" ]; then cp -n seeds/"$t"/* "corpus/$t/"; fi
    echo "fuzz: $t for ${secs}s"
    cargo fuzz run -s none -O "$t" "corpus/$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
        | grep -E "stat::number_of_executed_units|Done|ERROR|panicked" || true
    # cargo fuzz exits non-zero on a crash; re-check the artifacts folder explicitly.
    if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then
        echo "fuzz: $t found a crash:"; ls "artifacts/$t"; exit 1
    fi
done
echo "fuzz: all targets ran without a crash"
