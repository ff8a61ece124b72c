#!/usr/bin/env python3
"""PyTorch counterpart of one `efficientad-train distill-teacher` step on this CPU: draw a batch
of natural images, decode and resize them to 512² (backbone) and 256² (PDN), run the same ONNX
backbone in onnxruntime, build the PatchCore-style targets (unfold 3x3, pool to 1024 per layer,
upsample the coarse layer, pool to 384), normalize them, then one Adam step of the padded PDN's
MSE. Same work as Burn's step, so `efficientad-train bench` can compare the two.

Usage: python3 torch_distill.py --images DIR --backbone FILE.onnx [--variant s|m] [--batch 8]
       [--steps N]   (needs torch, onnxruntime, pillow)
The last stdout line is JSON: {"median_s": ..., "torch": "...", "threads": N}.
"""
import argparse
import json
import os
import random
import time

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from PIL import Image

from torch_step import pdn

EXT = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)


def views(path):
    img = Image.open(path).convert("RGB")
    big = np.asarray(img.resize((512, 512), Image.BILINEAR), dtype=np.float32) / 255.0
    small = np.asarray(img.resize((256, 256), Image.BILINEAR), dtype=np.float32) / 255.0
    return big.transpose(2, 0, 1), small.transpose(2, 0, 1)


def targets(fine, coarse, dim=1024, out=384):
    """As Burn's side computes it: the coarse layer is pooled to `dim` before it is upsampled
    (both are linear, on different axes: the same target for a quarter of the work)."""
    def embed(f, size):
        n, c, h, w = f.shape
        u = F.unfold(f, kernel_size=3, padding=1).permute(0, 2, 1).reshape(-1, 1, c * 9)
        u = F.adaptive_avg_pool1d(u, dim).reshape(n, h, w, dim)
        if (h, w) != size:
            u = F.interpolate(u.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
            u = u.permute(0, 2, 3, 1)
        return u.reshape(-1, 1, dim)
    n, _, h, w = fine.shape
    both = torch.cat([embed(fine, (h, w)), embed(coarse, (h, w))], dim=-1)
    t = F.adaptive_avg_pool1d(both, out).reshape(n, h, w, out)
    return t.permute(0, 3, 1, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True)
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--variant", choices=["s", "m"], default="s")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = random.Random(0)
    files = sorted(os.path.join(args.images, f) for f in os.listdir(args.images) if f.lower().endswith(EXT))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    backbone = ort.InferenceSession(args.backbone, opts, providers=["CPUExecutionProvider"])
    model = pdn(args.variant, 384, pad=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    times = []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        big, small = zip(*(views(rng.choice(files)) for _ in range(args.batch)))
        t1 = time.perf_counter()
        fine, coarse = backbone.run(None, {"image": np.stack(big)})[:2]
        t2 = time.perf_counter()
        with torch.no_grad():
            t = targets(torch.from_numpy(fine), torch.from_numpy(coarse))
            t = (t - t.mean(dim=(0, 2, 3), keepdim=True)) / t.std(dim=(0, 2, 3), keepdim=True)
        t3 = time.perf_counter()
        x = (torch.from_numpy(np.stack(small)) - MEAN) / STD
        loss = torch.mean((model(x) - t) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t4 = time.perf_counter()
        print(f"step {i}: decode {t1 - t0:.3f} s, backbone {t2 - t1:.3f} s, targets {t3 - t2:.3f} s, "
              f"pdn {t4 - t3:.3f} s")
        if i > 0:
            times.append(t4 - t0)
    times.sort()
    med = times[len(times) // 2] if len(times) % 2 else 0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}: median distillation step "
          f"(batch {args.batch}) {med:.3f} s")
    print(json.dumps({"median_s": med, "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
