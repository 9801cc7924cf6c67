#!/usr/bin/env bash
# The README's first command: sets up what is missing, builds the functions with
# cargo-lambda, starts moto and one redis-server per region, runs the two-region
# simulation with the real binaries, and stops the emulators.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
# --help and unknown options are answered before anything is installed or built (the help
# is the binary's own text; the binary checks the values).
HELP_FILE=tests/src/sim/help.txt
known=" $(grep -oE '^ +(-h, )?--[a-z-]+' "$HELP_FILE" | grep -oE -- '--[a-z-]+' | tr '\n' ' ') -h "
for arg in "$@"; do
  case "$arg" in
    -h | --help) cat "$HELP_FILE"; exit 0 ;;
    -*)
      if [[ "$known" != *" ${arg%%=*} "* ]]; then
        echo "simulate.sh: unknown option \`${arg%%=*}\` (bash scripts/simulate.sh --help lists them)" >&2
        exit 2
      fi ;;
  esac
done
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
