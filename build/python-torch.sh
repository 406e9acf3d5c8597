#!/usr/bin/env bash
# Debian's PyTorch for the export interoperability test: installs python3-torch (root or sudo) unless
# /usr/bin/python3 can already import torch.
set -euo pipefail
if /usr/bin/python3 -c 'import torch, numpy' 2> /dev/null; then exit 0; fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "Installing python3-torch (Debian)..."
$sudo apt-get update -qq
$sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-torch python3-numpy > /dev/null
