#!/usr/bin/env bash
# Benchmarks (never run in CI): the pipeline bench (release profile) beside the scan limit
# and the Python peer on the same batch files, then the runtime and
# cache measurements against local emulators and the cargo-lambda binaries, then the arm64
# zip sizes from `sam build`.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
bash scripts/setup.sh
PEER_VENV="$ROOT/.venv/peer"
if [ ! -x "$PEER_VENV/bin/python" ]; then
  step "python venv for the peer: aws-lambda-powertools"
  python3 -m venv "$PEER_VENV"
  "$PEER_VENV/bin/pip" install -q 'aws-lambda-powertools>=3,<4'
fi
step "stream-processor hot path beside the scan limit (release build, one core; load: $(cut -d' ' -f1-3 /proc/loadavg))"
cargo bench -p tidemark --bench pipeline | tee "$STATE/bench-pipeline.log"
step "the Python peer (Powertools BatchProcessor + DynamoDBRecord) on the same files"
for f in stream-4000x1400.json stream-10000x560.json; do
  peer=$("$PEER_VENV/bin/python" scripts/peer/powertools_peer.py "target/bench/$f" 10)
  ours=$(grep -F "\"bench\":\"$f\"" "$STATE/bench-pipeline.log" | sed 's/^ *//')
  python3 - "$f" "$peer" "$ours" <<'PY'
import json, sys
f, peer, ours = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
p, t, s = peer["records_per_s"], ours["records_per_s"], ours["scan_records_per_s"]
print(f"  {f}: tidemark {t:,.0f} records/s (median; best {ours['best_records_per_s']:,.0f}), peer {p:,.0f} records/s, scan limit {s:,.0f} records/s"
      f" -> tidemark is {t / p:.1f}x the peer and {s / t:.2f}x slower than the scan")
PY
done
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
step "cache-invalidator end to end (SQS batch of SNS-wrapped messages → parse → UNLINK)"
target/release/tidemark-bench invalidator
step "arm64 zip sizes (sam build)"
[ -d .aws-sam/build ] || sam build
python3 - <<'PY'
import glob, os, zipfile
for f in sorted(glob.glob(".aws-sam/build/*Function")):
    with zipfile.ZipFile("/tmp/tidemark-fn.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.write(f + "/bootstrap", "bootstrap")
    print("  %-28s bootstrap %5.1f MB, zip %4.1f MB" % (os.path.basename(f), os.path.getsize(f + "/bootstrap") / 1e6, os.path.getsize("/tmp/tidemark-fn.zip") / 1e6))
PY
