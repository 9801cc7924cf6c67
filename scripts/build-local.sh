#!/usr/bin/env bash
# Builds the four function binaries with cargo-lambda for this machine (x86-64), with the
# `local` profile (optimised, no LTO: fast links) into target/lambda-local/<name>/bootstrap —
# the binaries the system tests and the simulation run under the Runtime API.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
command -v cargo-lambda >/dev/null || die "cargo-lambda missing: run scripts/setup.sh"
target=x86_64-unknown-linux-gnu
[ "$(uname -m)" = aarch64 ] && target=aarch64-unknown-linux-gnu
step "cargo lambda build --profile local ($target)"
args=()
for f in stream-processor object-processor cache-invalidator replication-canary; do args+=(--bin "$f"); done
cargo lambda build --profile local --target "$target" --lambda-dir target/lambda-local "${args[@]}"
for f in stream-processor object-processor cache-invalidator replication-canary; do
  [ -x "target/lambda-local/$f/bootstrap" ] || die "target/lambda-local/$f/bootstrap was not built"
done
