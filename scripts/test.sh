#!/usr/bin/env bash
# The test command (README, .ci/run): sets up what is missing, then checks formatting,
# lints, the example configuration, every test (unit + system, against moto and one
# redis-server per region, with the cargo-lambda-built binaries), the template
# (sam validate --lint, cfn-lint, checkov, scripts/template_props.py, CloudFormation Guard
# over the expanded template) and `sam build`; a seeded simulation, and its dashboard page
# rendered in headless Chromium. The system tests deploy the expanded template
# into moto (the deploy rehearsal).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
start=$(date +%s)

bash scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "tidemark check tidemark.toml"
cargo run -q -p tidemark --bin tidemark -- check tidemark.toml

bash scripts/build-local.sh

step "emulators"
trap 'bash scripts/env.sh down >/dev/null 2>&1 || true' EXIT
bash scripts/env.sh up >/dev/null
# shellcheck disable=SC1091
source "$STATE/env"

step "tests (unit + system)"
cargo nextest run --workspace --run-ignored all --no-fail-fast --test-threads 4 2>&1 | tee "$STATE/nextest.log"
# (set -o pipefail: a failing test run stops here.)
summary=$(grep -E 'Summary .* tests? run: ' "$STATE/nextest.log" | tail -n 1)
passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary")
[ -n "$passed" ] && [ "$passed" -gt 0 ] || die "the test run reported no passed tests"

step "simulation: a seeded 20 s run with every fault (the binaries built above)"
cargo build -q -p tidemark-tests --bin tidemark-sim --bin tidemark-page-check
target/debug/tidemark-sim --duration 20 --seed 7 --report "$STATE/sim-report.json" \
  --page "$STATE/sim-dashboard.html"

step "dashboard page: headless Chromium renders the run's page; every widget drew its data"
# In 20 s, six fault windows last about 1.4 s each: the s3-replication-failed window may
# see one failure only (one point, but there must be one), and conflicts are rare (one 5 s
# period, or none).
target/debug/tidemark-page-check "$STATE/sim-dashboard.html" --screenshot "$STATE/sim-dashboard.png" \
  --allow-sparse "S3 replication events per bucket and event type (counted in the source bucket's region)" \
  --allow-empty "Concurrent-write conflicts (last writer wins), counted in the losing region"

step "template: sam validate --lint, cfn-lint, checkov, deploy properties"
sam validate --lint
cfn-lint template.yaml
checkov -f template.yaml --framework cloudformation --compact --quiet --skip-download
"$VENV/bin/python" scripts/template_props.py template.yaml
bash scripts/guard.sh

step "sam build (arm64, release)"
sam build

step "done in $(( $(date +%s) - start ))s"
# The test runner's result, repeated as the closing line.
echo "tests: $passed passed, 0 failed"
