# One MoCE node with the CUDA backend (TorchSharp-cuda-linux).
# NOT built or run on the project's machines: they have no Docker engine, no GPU, and their NuGet
# mirror does not serve TorchSharp-cuda-linux. The CPU build is the default everywhere else.
#   docker build -t moce:cuda .
#   docker run --gpus all -v $PWD/runs:/runs moce:cuda pretrain --preset fashion --run /runs/q -o device=cuda
FROM mcr.microsoft.com/dotnet/sdk:10.0 AS build
# cuda (default, TorchSharp-cuda-linux) or cpu (deploy/docker-compose.yml builds the CPU image)
ARG TORCH_BACKEND=cuda
WORKDIR /src
COPY . .
# The publish target re-applies the GLIBCXX_3.4.32 fix (build/TorchSharpNative.targets) to the published library.
RUN dotnet publish src/MoCE.Cli -c Release -p:TorchBackend=$TORCH_BACKEND -o /app
# Fashion-MNIST from Debian (the SDK image is Debian 12), copied into the runtime image as $MOCE_DATA
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
COPY --from=mcr.microsoft.com/dotnet/runtime:10.0 /usr/share/dotnet /usr/share/dotnet
RUN ln -s /usr/share/dotnet/dotnet /usr/bin/dotnet \
 && apt-get update && apt-get install -y --no-install-recommends libicu74 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /app /app
COPY --from=build /usr/share/datasets/fashion-mnist /data/fashion-mnist
ENV MOCE_DATA=/data/fashion-mnist
WORKDIR /runs
ENTRYPOINT ["dotnet", "/app/moce.dll"]
