#!/usr/bin/env bash
# Builds the solution and runs every test project, then prints one summary line:
#   "Tests: N passed, N failed, N skipped"
# Needs the .NET 10 SDK, and root or sudo: it installs (a no-op where present) and starts what some tests need, each
# through build/apt-install.sh. PostgreSQL: build/postgres.sh installs Debian's postgresql, starts it and makes a role
# and a database, whose connection string reaches the tests as $MOCE_POSTGRES (set it yourself to use another server).
# build/python-torch.sh installs Debian's python3-torch for the export test, build/plot-deps.sh the fonts for the
# report tests' plots. The tests read the dataset samples committed in data/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${MOCE_POSTGRES:-}" ]; then
  MOCE_POSTGRES=$(MOCE_PG_DB=moce_test bash build/postgres.sh)
  export MOCE_POSTGRES
fi

bash build/plot-deps.sh                       # fonts for the report tests' plots
bash build/python-torch.sh                    # Debian's PyTorch, which loads an exported encoder in a test

results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
rc=0
dotnet test MoCE.Actors.sln -c Release --logger trx --results-directory "$results" "$@" || rc=$?

passed=0; failed=0; skipped=0; files=0
for trx in "$results"/*.trx; do
  [ -e "$trx" ] || continue
  files=$((files + 1))
  counters=$(grep -o '<Counters [^>]*>' "$trx" | head -n 1)
  get() { echo "$counters" | grep -o " $1=\"[0-9]*\"" | grep -o '[0-9]\+' || echo 0; }
  passed=$((passed + $(get passed)))
  failed=$((failed + $(get failed) + $(get error) + $(get timeout) + $(get aborted)))
  skipped=$((skipped + $(get notExecuted)))
done
projects=$(ls tests/*/*.Tests.csproj | wc -l)
missing=""
if [ "$files" -lt "$projects" ] && [ "$rc" -ne 0 ]; then
  missing="; $((projects - files)) of $projects test projects did not run (a build error above)"
fi
echo "Tests: $passed passed, $failed failed, $skipped skipped$missing"
exit "$rc"
