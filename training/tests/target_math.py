"""The distillation target's arithmetic in NumPy, written from docs/method.md (not from the Rust
code): PyTorch's adaptive average pooling, F.unfold's 3x3 patches and half-pixel bilinear
weights. Used by gauge_reference.py (the gauge test's independent reference) and by
scripts/projection-check.
"""
import numpy as np


def adaptive_pool(v, out):
    """PyTorch's adaptive_avg_pool1d over the last axis."""
    n = v.shape[-1]
    cols = []
    for i in range(out):
        start, end = (i * n) // out, -((-(i + 1) * n) // out)
        cols.append(v[..., start:end].mean(-1))
    return np.stack(cols, -1)


def unfold3(f):
    """[C,H,W] -> [H,W,C*9], index c*9 + ky*3 + kx, zero padding 1 (F.unfold)."""
    c, h, w = f.shape
    p = np.pad(f, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((h, w, c, 9))
    for ky in range(3):
        for kx in range(3):
            out[:, :, :, ky * 3 + kx] = p[:, ky:ky + h, kx:kx + w].transpose(1, 2, 0)
    return out.reshape(h, w, c * 9)


def resize_weights(src, dst):
    """Half-pixel bilinear weights [dst, src], edges clamped (align_corners=False)."""
    m = np.zeros((dst, src))
    for i in range(dst):
        x = max((i + 0.5) * src / dst - 0.5, 0.0)
        lo = min(int(np.floor(x)), src - 1)
        hi = min(lo + 1, src - 1)
        t = x - lo
        m[i, lo] += 1 - t
        m[i, hi] += t
    return m
