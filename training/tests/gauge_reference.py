"""Independent reference for `efficientad-train gauge --features target:...` (NumPy, ONNX
Runtime's Python API, scikit-learn), written from docs/method.md's description of the distillation target
and PatchCore's nearest-neighbour rule rather than from the Rust code.

Usage: gauge_reference.py BACKBONE DATASET SIZE RING NORMALIZE(0|1)
The images must already be SIZE x SIZE RGB (so no resize filter has to be matched), the memory
is every cell of every train/good image (so no random draw has to be matched). Prints JSON:
per-image scores and the three AUROCs.
"""
import glob
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image
from sklearn.metrics import roc_auc_score

from target_math import adaptive_pool, resize_weights, unfold3

backbone, dataset, size, ring, normalize = sys.argv[1:6]
size, ring, normalize = int(size), int(ring), normalize == "1"
session = ort.InferenceSession(backbone, providers=["CPUExecutionProvider"])


def image(path):
    x = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
    assert x.shape == (size, size, 3), (path, x.shape)
    if normalize:
        # One gain and offset per image: mean 0.45, std 0.225 (flat images: std floor 0.01).
        x = (x - x.mean()) / max(x.std(), 0.01) * 0.225 + 0.45
    return x.transpose(2, 0, 1).astype(np.float32)


def target(path):
    # The first two outputs, as the Rust side takes them (a classifier head, if any, is ignored).
    fine, coarse = session.run(None, {"image": image(path)[None]})[:2]
    uf, uc = unfold3(fine[0].astype(np.float64)), unfold3(coarse[0].astype(np.float64))
    (h, w), (hc, wc) = uf.shape[:2], uc.shape[:2]
    up = np.einsum("yi,xj,ijc->yxc", resize_weights(hc, h), resize_weights(wc, w), uc)
    both = np.concatenate([adaptive_pool(uf, 1024), adaptive_pool(up, 1024)], -1)
    return adaptive_pool(both, 384)  # [h, w, 384]


def files(d):
    return sorted(p for p in glob.glob(os.path.join(d, "*")) if os.path.isfile(p))


# Features standardized per channel with the statistics of every training cell (the space the
# student sees the teacher in); the memory is all training cells.
train = np.concatenate([target(p).reshape(-1, 384) for p in files(os.path.join(dataset, "train/good"))])
mean, std = train.mean(0), np.maximum(train.std(0), 1e-6)
memory = (train - mean) / std


def features(path):
    return (target(path) - mean) / std


labels, scores, inner, pixel_labels, pixel_scores, out = [], [], [], [], [], {}
for defect in sorted(os.listdir(os.path.join(dataset, "test"))):
    for p in files(os.path.join(dataset, "test", defect)):
        f = features(p)
        g = f.shape[0]
        d = ((f.reshape(-1, 1, 384) - memory[None]) ** 2).sum(-1).min(1)
        m = np.sqrt(d).reshape(g, g)
        labels.append(defect != "good")
        scores.append(m.max())
        inner.append(m[ring:g - ring, ring:g - ring].max())
        out[p] = [float(scores[-1]), float(inner[-1])]
        full = resize_weights(g, size) @ m @ resize_weights(g, size).T
        if defect == "good":
            mask = np.zeros((size, size), bool)
        else:
            stem = os.path.splitext(os.path.basename(p))[0]
            mask = np.asarray(Image.open(os.path.join(dataset, "ground_truth", defect, stem + "_mask.png")).convert("L")) > 0
        pixel_labels.append(mask.ravel())
        pixel_scores.append(full.ravel())
print(json.dumps({
    "scores": out,
    "image_auroc": roc_auc_score(labels, scores),
    "image_auroc_inner": roc_auc_score(labels, inner),
    "pixel_auroc": roc_auc_score(np.concatenate(pixel_labels), np.concatenate(pixel_scores)),
}))
