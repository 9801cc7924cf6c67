#!/usr/bin/env bash
# CloudFormation Guard: the rules' own tests (a passing and a failing example per rule),
# then the rules over template.yaml as CloudFormation sees it (SAM-expanded, per region).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
command -v cfn-guard >/dev/null || die "cfn-guard missing: run scripts/setup.sh"
out="$ROOT/target/tidemark-rehearsal"
mkdir -p "$out"

step "cfn-guard test (guard/tests)"
cfn-guard test -r guard/tidemark.guard -t guard/tests/tidemark_tests.yaml >"$out/guard-test.log" 2>&1 \
  || { grep -B12 'FAIL Rules' "$out/guard-test.log" | grep -E 'Name:|Expected' >&2; die "a Guard rule does not meet its own tests (see $out/guard-test.log)"; }
echo "guard rules pass their tests ($(grep -c '^Name:' "$out/guard-test.log") cases)"

pending=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' guard/pending.txt | awk '{print $1}' | sort)
for region in us-east-1 eu-west-1; do
  step "cfn-guard validate: template.yaml expanded for $region"
  python3 scripts/rehearse.py expand --region "$region" --resolve-mappings -o "$out/expanded-$region.json"
  cfn-guard validate -d "$out/expanded-$region.json" -r guard/tidemark.guard --show-summary all \
    -o single-line-summary >"$out/guard-$region.log" 2>&1 || true
  failing=$(sed -nE 's#^tidemark\.guard/([a-z0-9_]+)[[:space:]]+FAIL$#\1#p' "$out/guard-$region.log" | sort)
  passing=$(sed -nE 's#^tidemark\.guard/([a-z0-9_]+)[[:space:]]+(PASS|SKIP)$#\1#p' "$out/guard-$region.log" | sort)
  [ -n "$failing$passing" ] || die "cfn-guard reported no rule (see $out/guard-$region.log)"
  unexpected=$(comm -23 <(echo "$failing") <(echo "$pending") | sed '/^$/d')
  if [ -n "$unexpected" ]; then
    grep -A6 -E "$(echo "$unexpected" | paste -sd'|')" "$out/guard-$region.log" | head -40 >&2
    die "Guard rules fail on template.yaml ($region): $(echo "$unexpected" | paste -sd' ')"
  fi
  stale=$(comm -12 <(echo "$passing") <(echo "$pending") | sed '/^$/d')
  [ -z "$stale" ] || die "listed in guard/pending.txt but now met: $(echo "$stale" | paste -sd' ') (remove them)"
  echo "$(echo "$passing" | sed '/^$/d' | wc -l) rules met, pending: $(echo "$failing" | sed '/^$/d' | paste -sd' ')"
done

step "cfn-guard validate: the two deploy blockers kept as fixtures still fail their rules"
for case in "blocker-sqs-batch-without-window:sqs_batch_above_ten_has_window" \
            "blocker-peer-subscription-first-deploy:cross_region_subscription_only_when_enabled"; do
  fixture=${case%%:*}; rule=${case##*:}
  python3 scripts/rehearse.py expand --region us-east-1 --template "tests/fixtures/$fixture.yaml" -o "$out/$fixture.json"
  cfn-guard validate -d "$out/$fixture.json" -r guard/tidemark.guard --show-summary all -o single-line-summary \
    >"$out/guard-$fixture.log" 2>&1 || true
  grep -qE "^tidemark\.guard/$rule[[:space:]]+FAIL$" "$out/guard-$fixture.log" \
    || die "tests/fixtures/$fixture.yaml passes $rule (see $out/guard-$fixture.log)"
  echo "$fixture: $rule FAIL (as expected)"
done
