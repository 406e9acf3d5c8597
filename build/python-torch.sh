#!/usr/bin/env bash
# Debian's PyTorch for the export interoperability test: python3-torch and python3-numpy (root or sudo to install),
# imported by /usr/bin/python3.
set -euo pipefail
bash "$(dirname "$0")/apt-install.sh" python3-torch python3-numpy
/usr/bin/python3 -c 'import torch, numpy' || { echo "python-torch.sh: /usr/bin/python3 cannot import torch and numpy after the install" >&2; exit 1; }
