#!/usr/bin/env bash
# Benchmarks (never run in CI): the pipeline bench (release profile), then the runtime and
# cache measurements against local emulators and the cargo-lambda binaries, then the arm64
# zip sizes from `sam build`.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
bash scripts/setup.sh
step "pipeline: decode + derive + pack"
cargo bench -p tidemark --bench pipeline 2>&1 | grep -v '^{'
bash scripts/build-local.sh
cargo build -q --release -p tidemark-tests --bin tidemark-bench
trap 'bash scripts/env.sh down >/dev/null 2>&1 || true' EXIT
bash scripts/env.sh up >/dev/null
# shellcheck disable=SC1091
source "$STATE/env"
step "runtime"
target/release/tidemark-bench runtime
step "cache"
target/release/tidemark-bench cache
step "arm64 zip sizes (sam build)"
[ -d .aws-sam/build ] || sam build
python3 - <<'PY'
import glob, os, zipfile
for f in sorted(glob.glob(".aws-sam/build/*Function")):
    with zipfile.ZipFile("/tmp/tidemark-fn.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.write(f + "/bootstrap", "bootstrap")
    print("  %-28s bootstrap %5.1f MB, zip %4.1f MB" % (os.path.basename(f), os.path.getsize(f + "/bootstrap") / 1e6, os.path.getsize("/tmp/tidemark-fn.zip") / 1e6))
PY
