# Shared shell helpers: sourced by the scripts in this folder.
# shellcheck shell=bash
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.tidemark"          # PIDs, ports, logs, certificates (git-ignored)
VENV="$ROOT/.venv/tools"         # moto, SAM CLI, cargo-lambda
CHECKOV_VENV="$ROOT/.venv/checkov" # checkov alone: it downgrades boto3 beside the SAM CLI
export SAM_CLI_TELEMETRY=0
export PATH="$VENV/bin:$CHECKOV_VENV/bin:$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
