#!/usr/bin/env bash
# Builds every cargo-fuzz target on stable (-s none: sanitizers need nightly) and
# runs each for the given number of seconds (default 60). A crash, an
# out-of-memory input, a timeout, a leak or any failed run fails the script.
# Usage: bash scripts/fuzz.sh [SECONDS]      (0 = skip)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo-env.sh
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
    set +e
    cargo fuzz run -s none -O "$t" "corpus/$t" -- -max_total_time="$secs" -print_final_stats=1 \
        >"fuzz-$t.log" 2>&1
    rc=$?
    set -e
    grep -E "stat::number_of_executed_units|Done|ERROR|panicked" "fuzz-$t.log" || true
    # A crash, an out-of-memory input, a timeout or a leak is a failure, and
    # so is any other non-zero exit of the run.
    if ls "artifacts/$t"/crash-* "artifacts/$t"/oom-* "artifacts/$t"/timeout-* \
        "artifacts/$t"/leak-* >/dev/null 2>&1; then
        echo "fuzz: $t found a failing input:"; ls "artifacts/$t"; exit 1
    fi
    if [ "$rc" -ne 0 ]; then
        echo "fuzz: $t exited with $rc:"; tail -n 30 "fuzz-$t.log"; exit 1
    fi
done
echo "fuzz: all targets ran without a failure"
