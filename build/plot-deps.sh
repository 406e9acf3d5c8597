#!/usr/bin/env bash
# What `moce report` and `moce chaos compare` need to draw their PNGs (ScottPlot on SkiaSharp): fonts that fontconfig
# can find. Installs Debian's fontconfig and fonts-dejavu-core if no font is present (root or sudo).
set -euo pipefail
if command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list 2>/dev/null | head -n 1)" ]; then exit 0; fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "Installing fonts for the report plots (fontconfig, fonts-dejavu-core)..." >&2
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq fontconfig fonts-dejavu-core >&2
