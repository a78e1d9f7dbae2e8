#!/usr/bin/env bash
# The project's main job: a self-contained demonstration in network namespaces.
# Usage: sudo bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo-env.sh
bash scripts/install-deps.sh
cargo build --release --locked -p mh-examples --bin demo -p hipd-backend --bins
exec ./target/release/demo "$@"
