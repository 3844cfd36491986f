#!/usr/bin/env bash
# The instruction-count guard (issue 23): instructions per request of the whole
# switchyard process (ingress, worker and accounting in one, under callgrind)
# for fixed requests, against the committed baseline in bench/instructions.json.
# A count is a real figure, not a timing: it does not move with the machine's
# load, so the guard cannot flake on a busy box. Each kind of request is
# counted twice (1,000 requests each) and the lower count is compared: work
# that lands in a window now and then (a periodic refresh, a ClickHouse
# flush) only ever adds. Fails when a count is more than `tolerance` above its
# baseline, or more than twice that below it (then the baseline is stale:
# lower it in the same change, with the figure in docs/BENCHMARKS.md).
#
#   bench/instructions.sh            # build the release binaries, count, compare
#   SKIP_BUILD=1 bench/instructions.sh
#
# Run by scripts/test.sh after the test suite. Needs valgrind (installed from
# Debian's packages when missing) and what bench/run.sh needs.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=../scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"
ensure_valgrind

results=$(mktemp)
trap 'rm -f "$results"' EXIT
# The bench's own state directory: what it finds running (the test suite's
# servers) it leaves running. A run that could not count (switchyard did not
# start under valgrind in time, a round had refused requests: bench/run.sh
# says which) is run once more before the guard gives up.
# The build first, once: a count that is run again must count this build.
if [[ -z ${SKIP_BUILD:-} ]]; then
  cargo build --release --locked --bin switchyard --bin mock-provider --bin sy-bench
fi
count() {
  SY_STATE_DIR="$ROOT/.local/bench" SKIP_BUILD=1 BENCH_RESULTS="$results" ONLY=callgrind \
    bash bench/run.sh >/dev/null
}
if ! count; then
  echo "bench/instructions.sh: the count failed; once more" >&2
  count
fi
python3 - "$results" bench/instructions.json <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
counts = [r for r in rows if r.get("label") == "callgrind"]
if not counts:
    sys.exit("no callgrind figures: see bench/run.sh's output above")
got = counts[-1]
base = json.load(open(sys.argv[2]))
tolerance = base["tolerance"]
failed = []
print("| request | baseline | counted (lower of two) | change |")
print("|---|---|---|---|")
for kind, want in base["instructions_per_request"].items():
    have = min(got["runs_" + kind])
    change = have / want - 1
    print(f"| {kind} | {want:,} | {have:,} | {100 * change:+.1f} % |")
    if change > tolerance:
        failed.append(f"{kind}: {have:,} instructions per request, {100 * change:.1f} % above the baseline {want:,}")
    elif change < -2 * tolerance:
        failed.append(f"{kind}: {have:,} instructions per request, {-100 * change:.1f} % below the baseline {want:,}: "
                      "lower bench/instructions.json (and say so in docs/BENCHMARKS.md)")
if failed:
    sys.exit("instruction-count guard:\n  " + "\n  ".join(failed))
print(f"Every count within {100 * tolerance:.0f} % of bench/instructions.json.")
PY
