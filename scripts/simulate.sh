#!/usr/bin/env bash
# The README's first command: sets up what is missing, builds the functions with
# cargo-lambda, starts moto and one redis-server per region, runs the two-region
# simulation with the real binaries, and stops the emulators.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
bash scripts/setup.sh
bash scripts/build-local.sh
step "building the simulation"
cargo build -q -p tidemark-tests --bin tidemark-sim
step "emulators"
trap 'bash scripts/env.sh down >/dev/null 2>&1 || true' EXIT
bash scripts/env.sh up >/dev/null
# shellcheck disable=SC1091
source "$STATE/env"
step "simulation"
target/debug/tidemark-sim "$@"
