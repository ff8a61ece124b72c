#!/usr/bin/env python3
"""PyTorch reference for one EfficientAD training step on this CPU: batch 1, all four losses,
Adam, the teacher's output on the training image cached, as in the reference implementation's
loop (three separate student passes). `efficientad-train bench` runs it to compare with Burn.

Usage: python3 torch_step.py [--variant s|m] [--steps N]   (needs torch)
The last stdout line is JSON: {"median_s": ..., "torch": "...", "threads": N}.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn


def pdn(variant, out, pad=False):
    p = 1 if pad else 0
    if variant == "s":
        return nn.Sequential(
            nn.Conv2d(3, 128, 4, padding=3 * p), nn.ReLU(), nn.AvgPool2d(2, 2, padding=p),
            nn.Conv2d(128, 256, 4, padding=3 * p), nn.ReLU(), nn.AvgPool2d(2, 2, padding=p),
            nn.Conv2d(256, 256, 3, padding=p), nn.ReLU(), nn.Conv2d(256, out, 4))
    return nn.Sequential(
        nn.Conv2d(3, 256, 4, padding=3 * p), nn.ReLU(), nn.AvgPool2d(2, 2, padding=p),
        nn.Conv2d(256, 512, 4, padding=3 * p), nn.ReLU(), nn.AvgPool2d(2, 2, padding=p),
        nn.Conv2d(512, 512, 1), nn.ReLU(), nn.Conv2d(512, 512, 3, padding=p), nn.ReLU(),
        nn.Conv2d(512, out, 4), nn.ReLU(), nn.Conv2d(out, out, 1))


class Autoencoder(nn.Module):
    def __init__(self, out=384):
        super().__init__()
        self.enc = nn.ModuleList([nn.Conv2d(3, 32, 4, 2, 1), nn.Conv2d(32, 32, 4, 2, 1), nn.Conv2d(32, 64, 4, 2, 1),
                                  nn.Conv2d(64, 64, 4, 2, 1), nn.Conv2d(64, 64, 4, 2, 1), nn.Conv2d(64, 64, 8)])
        self.dec = nn.ModuleList([nn.Conv2d(64, 64, 4, 1, 2) for _ in range(6)]
                                 + [nn.Conv2d(64, 64, 3, 1, 1), nn.Conv2d(64, out, 3, 1, 1)])

    def forward(self, x):
        for i, c in enumerate(self.enc):
            x = c(x)
            if i < 5:
                x = F.relu(x)
        for c, s in zip(self.dec[:6], [3, 8, 15, 32, 63, 127]):
            x = F.dropout(F.relu(c(F.interpolate(x, size=s, mode="bilinear"))), 0.2, self.training)
        x = F.relu(self.dec[6](F.interpolate(x, size=56, mode="bilinear")))
        return self.dec[7](x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=["s", "m"], default="s")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    teacher, student, ae = pdn(args.variant, 384).eval(), pdn(args.variant, 768), Autoencoder()
    opt = torch.optim.Adam(list(student.parameters()) + list(ae.parameters()), lr=1e-4, weight_decay=1e-5)
    img, pen = torch.rand(1, 3, 256, 256), torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        t_img = teacher(img)
    times = []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        aug = torch.clamp(img * 1.1, 0, 1)
        with torch.no_grad():
            t_aug = teacher(aug)
        s = student(img)[:, :384]
        d = (t_img - s) ** 2
        q = torch.quantile(d.flatten()[:2**24], 0.999)
        hard = d[d >= q].mean()
        penalty = (student(pen)[:, :384] ** 2).mean()
        a = ae(aug)
        loss = hard + penalty + ((t_aug - a) ** 2).mean() + ((a - student(aug)[:, 384:]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2] if len(times) % 2 else 0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}: median step {med:.3f} s = {1/med:.3f} steps/s")
    print(json.dumps({"median_s": med, "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
