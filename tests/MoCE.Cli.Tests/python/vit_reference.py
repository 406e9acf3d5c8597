"""Loads an encoder written by `moce export` into a plain PyTorch ViT with timm's module names (no MoCE code),
runs it on the exported check images, and compares the features with the ones moce computed.

usage: python3 vit_reference.py EXPORT_DIR [TOLERANCE]   (exit 0: max |diff| <= TOLERANCE, default 1e-5)
"""
import json
import sys

import numpy as np
import torch
import torch.nn as nn


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, eps):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """timm's VisionTransformer(class_token=True, global_pool='avg', fc_norm=False, num_classes=0)."""

    def __init__(self, c):
        super().__init__()
        dim, grid = c["embed_dim"], c["img_size"] // c["patch_size"]
        self.patch_embed = PatchEmbed(c["in_chans"], dim, c["patch_size"])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = nn.ModuleList([Block(dim, c["num_heads"], c["mlp_ratio"], c["norm_eps"]) for _ in range(c["depth"])])
        self.norm = nn.LayerNorm(dim, eps=c["norm_eps"])

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 1:].mean(dim=1)


def read_safetensors(path):
    """The safetensors format read with the standard library and torch alone: u64 header length, a JSON header of
    name -> dtype, shape, data_offsets, then the raw little-endian data."""
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    dtypes = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = torch.frombuffer(bytearray(raw[8 + n + b:8 + n + e]), dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def main():
    d = sys.argv[1]
    tol = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-5
    c = json.load(open(f"{d}/config.json"))
    model = VisionTransformer(c).eval()
    state = torch.load(f"{d}/encoder.pt", map_location="cpu")
    model.load_state_dict(state, strict=True)  # every name must match, none may be missing or extra
    st = read_safetensors(f"{d}/encoder.safetensors")
    same = sorted(st) == sorted(state) and all(torch.equal(st[k], state[k]) for k in state)
    print(f"encoder.safetensors: {len(st)} tensors, {'equal to' if same else 'DIFFERENT from'} encoder.pt")
    if not same:
        sys.exit(1)
    n = c["check_images"]
    imgs = torch.from_numpy(np.fromfile(f"{d}/check-images.f32", dtype="<f4").reshape(n, c["in_chans"], c["img_size"], c["img_size"]).copy())
    want = torch.from_numpy(np.fromfile(f"{d}/check-features.f32", dtype="<f4").reshape(n, c["embed_dim"]).copy())
    with torch.no_grad():
        got = model(imgs)
    diff = (got - want).abs().max().item()
    print(f"torch {torch.__version__}: {len(state)} tensors loaded strictly; {n} images; max |feature diff| = {diff:.3e} (tolerance {tol:g}); feature scale {want.abs().max().item():.3f}")
    sys.exit(0 if diff <= tol else 1)


if __name__ == "__main__":
    main()
