#!/usr/bin/env bash
# A short check on a machine with an NVIDIA GPU (at most ~10 minutes): the bench's ratios on cuda, and the step time of
# the ViT-S/16 preset at 224. Nothing else in the repository needs a GPU.
#
#   bash build/gpu-check.sh              # a machine with the .NET 10 SDK that reaches TorchSharp-cuda-linux: builds the
#                                        # CUDA backend (-p:TorchBackend=cuda) and runs it
#   bash build/gpu-check.sh PUBLISH_DIR  # a machine without .NET: a self-contained publish made elsewhere with
#                                        #   dotnet publish src/MoCE.Cli -c Release -r linux-x64 --self-contained -o PUBLISH_DIR
#                                        # whose TorchSharp wrapper (libLibTorchSharp.so) is tried against the libtorch of the
#                                        # machine's PyTorch (python3 -c 'import torch'): the publish's own libtorch is not loaded
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L || { echo "gpu-check: no NVIDIA GPU here (nvidia-smi failed)" >&2; exit 1; }
if [[ $# -eq 0 ]]; then
  dotnet build src/MoCE.Cli -c Release -p:TorchBackend=cuda
  moce=(dotnet src/MoCE.Cli/bin/Release/net10.0/moce.dll)
else
  pub=$(cd "$1" && pwd)
  torchlib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  echo "gpu-check: PyTorch $(python3 -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)') from $torchlib"
  # the wrapper resolves libtorch, libtorch_cpu, libtorch_cuda and libc10 by name: PyTorch's, not the publish's CPU build
  mkdir -p "$pub/cpu-libtorch-set-aside"
  for f in "$pub"/libtorch*.so "$pub"/libc10*.so "$pub"/libgomp*.so*; do [[ -e $f ]] && mv "$f" "$pub/cpu-libtorch-set-aside/"; done
  export LD_LIBRARY_PATH="$torchlib:$pub${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  moce=("$pub/moce")
fi
echo "== bench on cuda (dense, MoCE reference and actor engine; ratios)"
timeout 300 "${moce[@]}" bench -o device=cuda -o threads=0 --warmup 10 --steps 80 --rounds 4 2>&1 | grep -E "bench|ratio|ms" || echo "gpu-check: bench on cuda failed"
echo "== ViT-S/16 at 224 on cuda: loader against trainer, step time of a batch of 64"
timeout 240 "${moce[@]}" bench-data --preset vit-small -o device=cuda -o threads=0 -o pretrain.batch-size=64 -o pretrain.accum-steps=1 --warmup 2 --steps 10 2>&1 | grep -E "bench-data" || echo "gpu-check: bench-data on cuda failed"
