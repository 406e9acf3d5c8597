#!/usr/bin/env bash
# What `moce report` and `moce chaos compare` need to draw their PNGs (ScottPlot on SkiaSharp): fontconfig and a font
# it can find (Debian's fontconfig and fonts-dejavu-core; root or sudo to install).
set -euo pipefail
bash "$(dirname "$0")/apt-install.sh" fontconfig fonts-dejavu-core
