#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/property tests, lab integration
# tests in network namespaces (root required), and a short fuzz smoke run.
# Usage: sudo bash scripts/test.sh        (FUZZ_SECONDS=0 skips the fuzz smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo-env.sh

bash scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
(cd fuzz && cargo fmt --all -- --check)

echo "== cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fuzz targets are their own workspace (cargo-fuzz's layout).
(cd fuzz && cargo clippy --bins -- -D warnings)

echo "== cargo test (unit, property and lab integration tests)"
# Lab tests each build their own namespaces with unique names, so they may run
# in parallel; the machine has 2 cores, so keep the thread count modest.
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-4}"

echo "== fuzz smoke run"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
