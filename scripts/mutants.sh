#!/usr/bin/env bash
# Mutation evidence for the tests that claim the README's properties (not part of
# scripts/test.sh or CI: it rebuilds once per break, ~1–2 min each on 2 cores).
#
#   bash scripts/mutants.sh            every break below, then the same tests on the clean tree
#   bash scripts/mutants.sh NAME...    only these breaks
#   bash scripts/mutants.sh --check    only check that every break still matches the code
#
# For each break: apply it (an exact text replacement, which must match exactly once), run
# the test that should catch it, require that test to FAIL, restore the file. Finally run
# every listed test on the unmodified tree and require it to PASS. System tests run with the
# handlers in-process (TIDEMARK_IN_PROCESS=1) against the emulators of scripts/env.sh.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

# name | file | text to replace | replacement | test filter (nextest)
# (`\n` in the texts stands for a newline.)
MUTANTS=$(cat <<'EOF'
slot-ignores-hash-tags|shared/src/adapters/cache.rs|crc16(tagged.unwrap_or(key)) % 16384|crc16(key) % 16384|test(=adapters::cache::tests::slots_match_the_redis_specification)
slot-wrong-polynomial|shared/src/adapters/cache.rs|(crc << 1) ^ 0x1021|(crc << 1) ^ 0x8005|test(=adapters::cache::tests::slots_match_the_redis_specification)
one-message-per-key|shared/src/invalidation.rs|if !current.is_empty() && cost + key_cost > budget {|if !current.is_empty() {|test(=insert_update_delete_and_ttl_publish_exactly_the_expected_keys)
body-budget-over-sns-limit|shared/src/invalidation.rs|pub const BODY_BUDGET: usize = SNS_MAX_BYTES - ENVELOPE_HEADROOM;|pub const BODY_BUDGET: usize = SNS_MAX_BYTES + SNS_MAX_BYTES / 2;|test(=many_changes_pack_into_few_messages_under_the_size_limit)
requests-ignore-size-limit|shared/src/invalidation.rs|size + s > SNS_MAX_BYTES|size + s > 4 * SNS_MAX_BYTES|test(=many_changes_pack_into_few_messages_under_the_size_limit)
half-the-usable-size|shared/src/invalidation.rs|pub const ENVELOPE_HEADROOM: usize = 8 * 1024;|pub const ENVELOPE_HEADROOM: usize = 128 * 1024;|test(=many_changes_pack_into_few_messages_under_the_size_limit)
reject-is-retried|shared/src/pipeline.rs|(id, Outcome::failed(error.class(), error.to_string()), None)|(id, Outcome::Retry(error.to_string()), None)|test(=poison_record_is_dead_lettered_and_neighbours_are_processed)
reject-logs-the-record|shared/src/pipeline.rs|index = i, key = %key, reason = %why, "{message}");|index = i, key = %key, record = raws[i].get(), reason = %why, "{message}");|test(=poison_record_is_dead_lettered_and_neighbours_are_processed)
no-cache-timeouts|shared/src/adapters/cache.rs|.set_connection_timeout(Some(CONNECT_TIMEOUT))\n                .set_response_timeout(Some(RESPONSE_TIMEOUT));|.set_connection_timeout(None)\n                .set_response_timeout(None);|test(=black_holed_cache_times_out_and_leaves_nothing_stale)
plus-stays-plus|shared/src/objects.rs|b'+' => out.push(b' '),|b'+' => out.push(b'+'),|test(=object_events_invalidate_decoded_keys)
token-valid-an-hour|shared/src/adapters/iam_auth.rs|pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);|pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);|test(=iam_token_is_the_presigned_request_botocore_computes)
token-ignores-the-clock|shared/src/adapters/cache.rs|let now = clock.now();|let now = SystemTime::now();|test(=iam_token_is_the_presigned_request_botocore_computes)
iam-connection-kept-an-hour|shared/src/adapters/cache.rs|pub const IAM_CONNECTION_MAX_AGE: Duration = Duration::from_secs(10 * 60);|pub const IAM_CONNECTION_MAX_AGE: Duration = Duration::from_secs(60 * 60);|test(=iam_tokens_older_than_15_minutes_are_never_sent_again)
iam-cluster-connection-kept-an-hour|shared/src/adapters/cache.rs|pub const IAM_CONNECTION_MAX_AGE: Duration = Duration::from_secs(10 * 60);|pub const IAM_CONNECTION_MAX_AGE: Duration = Duration::from_secs(60 * 60);|test(=iam_tokens_older_than_15_minutes_are_never_sent_on_cluster_reconnects)
heartbeat-time-frozen|shared/src/app/canary.rs|item.push((WRITTEN_AT.to_owned(), ItemValue::N(now.to_string())));|item.push((WRITTEN_AT.to_owned(), ItemValue::N("1".to_owned())));|test(=paused_replication_grows_the_heartbeat_age_one_way_only)
naive-invalidation-filtered|tests/src/world.rs|.subscribe(&regions[0].topic_arn, &regions[1].queue_arn, true, None)|.subscribe(&regions[0].topic_arn, &regions[1].queue_arn, true, Some(json!({"replicated": ["false"]})))|test(=naive_cross_region_wiring_leaves_stale_refills)
eu-stream-not-invalidating|tests/src/world.rs|stream_enabled: !(options.naive_wiring && r == "eu-west-1"),|stream_enabled: r != "eu-west-1",|test(=a_reader_held_across_the_invalidation_leaves_a_stale_refill)
second-delete-not-delayed|template.yaml|      DelaySeconds: !Ref SecondDeleteDelaySeconds|      DelaySeconds: 0|test(=delayed_second_delete_removes_a_held_readers_refill)
EOF
)

check_only=0
if [ "${1:-}" = "--check" ]; then check_only=1; shift; fi
want=("$@")
for w in "${want[@]}"; do
  grep -q "^$w|" <<<"$MUTANTS" || die "no break named $w"
done
selected() {
  [ ${#want[@]} -eq 0 ] && return 0
  local w; for w in "${want[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1
}

# Replaces $3 by $4 in $2 (exactly one match), keeping a backup in $2.mutant-orig.
apply() {
  python3 - "$@" <<'PY'
import sys
path, old, new = sys.argv[1], sys.argv[2].replace("\\n", "\n"), sys.argv[3].replace("\\n", "\n")
text = open(path, encoding="utf-8").read()
n = text.count(old)
if n != 1:
    sys.exit(f"{path}: expected the text to break once, found it {n} times: {old!r}")
open(path + ".mutant-orig", "w", encoding="utf-8").write(text)
open(path, "w", encoding="utf-8").write(text.replace(old, new))
PY
}
# Restores $1 and marks it newer than the mutated build (the backup's older mtime would
# make cargo keep the mutated binary).
restore() { [ -f "$1.mutant-orig" ] && mv "$1.mutant-orig" "$1" && touch "$1"; return 0; }
current=""
trap '[ -n "$current" ] && restore "$current"' EXIT

# Every selected break must still match the code, exactly once, before anything runs: a
# break whose text no longer exists would otherwise "survive" nothing and prove nothing.
stale=0
while IFS='|' read -r name file old _new _filter; do
  [ -z "$name" ] && continue
  selected "$name" || continue
  n=$(python3 -c 'import sys; print(open(sys.argv[1], encoding="utf-8").read().count(sys.argv[2].replace("\\n", "\n")))' "$file" "$old")
  if [ "$n" != 1 ]; then
    printf 'error: break %s: expected its text once in %s, found it %s times: %s\n' "$name" "$file" "$n" "$old" >&2
    stale=1
  fi
done <<<"$MUTANTS"
[ "$stale" = 0 ] || die "some breaks no longer match the code: repoint them"
if [ "$check_only" = 1 ]; then
  echo "every selected break matches the code exactly once"
  exit 0
fi

step "emulators"
bash scripts/env.sh up >/dev/null
# shellcheck disable=SC1091
source "$STATE/env"
export TIDEMARK_IN_PROCESS=1

run_test() { # filter → exit status of the test run
  local pkg=tidemark-tests
  case "$1" in *adapters::*) pkg=tidemark ;; esac
  cargo nextest run -p "$pkg" --run-ignored all --no-fail-fast -E "$1" >"$STATE/mutant.log" 2>&1
}

results=()
failed=0
filters=()
while IFS='|' read -r name file old new filter; do
  [ -z "$name" ] && continue
  selected "$name" || continue
  filters+=("$filter")
  step "break: $name ($file) → expect $filter to fail"
  current="$file"
  apply "$file" "$old" "$new"
  if run_test "$filter"; then
    results+=("SURVIVED  $name  ($filter passed with the break)")
    failed=1
  elif grep -qE 'error(\[E[0-9]+\])?:' "$STATE/mutant.log" && ! grep -q 'FAIL \[' "$STATE/mutant.log"; then
    results+=("BUILD?    $name  (the break did not compile; see the log)")
    tail -n 20 "$STATE/mutant.log"
    failed=1
  else
    results+=("caught    $name  by $filter")
    grep -m1 -A3 -E "panicked at|Error:" "$STATE/mutant.log" | sed 's/^/    /' || true
  fi
  restore "$file"
  current=""
done <<<"$MUTANTS"

step "clean tree: every listed test passes"
mapfile -t unique < <(printf '%s\n' "${filters[@]}" | sort -u)
for f in "${unique[@]}"; do
  if run_test "$f"; then
    results+=("passes    on the clean tree: $f")
  else
    results+=("FAILS     on the clean tree: $f")
    failed=1
  fi
done

step "summary"
printf '%s\n' "${results[@]}"
exit "$failed"
