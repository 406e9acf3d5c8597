#!/usr/bin/env bash
# The quickstart: installs Fashion-MNIST from Debian if it is missing, builds, and runs the pipeline
# with hocon/quickstart.conf in runs/quickstart (run it again to resume). Extra arguments go to moce,
# e.g. bash build/quickstart.sh -o pretrain.steps=500
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${MOCE_DATA:-}" ] && [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)..."
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq dataset-fashion-mnist
fi
bash build/plot-deps.sh                       # fonts for moce report's plots
dotnet build src/MoCE.Cli -c Release -v quiet -nologo
exec dotnet src/MoCE.Cli/bin/Release/net10.0/moce.dll pipeline --preset quickstart --run runs/quickstart "$@"
