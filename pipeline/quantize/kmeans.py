"""The k-means patch quantizer: a codebook of raw-pixel patches fitted on the corpus itself.

It needs no downloaded weights, so the demo and tests run real end to end. The codebook is a
safetensors file (never pickle) whose metadata records the image size, patch size, resampling
and a content fingerprint that is re-checked on every load.
"""
from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.metrics import progress
from pipeline.ingest.preprocess import ImageSpec
from pipeline.quantize.spec import QuantizerSpec, fingerprint
from schemas.base import InputError, StorageOptions

FORMAT = "vbpe.kmeans.v1"
NORMALISATION = "x/255"


def extract_patches(images: np.ndarray, patch: int) -> np.ndarray:
    """(B, S, S, 3) uint8 -> (B, S/p, S/p, p*p*3) float32 in [0, 1], row-major over the grid."""
    b, s, _, c = images.shape
    g = s // patch
    x = images.reshape(b, g, patch, g, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g, g, patch * patch * c).astype(np.float32) / 255.0


def nearest(x, centroids, chunk: int = 16384):
    """Index of and squared distance to the nearest centroid for each row of x (torch tensors)."""
    import torch

    c_sq = (centroids * centroids).sum(1)
    idx = torch.empty(x.shape[0], dtype=torch.int64)
    dist = torch.empty(x.shape[0], dtype=torch.float32)
    for lo in range(0, x.shape[0], chunk):
        xs = x[lo : lo + chunk]
        d = torch.addmm(c_sq[None, :], xs, centroids.T, alpha=-2.0)
        best = d.min(dim=1)
        idx[lo : lo + chunk] = best.indices
        dist[lo : lo + chunk] = (best.values + (xs * xs).sum(1)).clamp_(min=0)
    return idx, dist


def _kmeans_pp(x, k: int, gen):
    import torch

    first = int(torch.randint(x.shape[0], (1,), generator=gen))
    centroids = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in progress(range(1, k), "k-means++ seeding", stage="quantize", unit="code"):
        total = float(d2.sum())
        if total > 0:
            i = int(torch.multinomial(d2 / total, 1, generator=gen))
        else:
            i = int(torch.randint(x.shape[0], (1,), generator=gen))
        centroids.append(x[i])
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return torch.stack(centroids)


def fit_centroids(x: np.ndarray, k: int, iterations: int, seed: int, init_points: int = 20000) -> tuple[np.ndarray, dict[str, Any]]:
    """Lloyd's k-means with k-means++ seeding; empty clusters are re-seeded with the worst-fitted points."""
    import torch

    if x.shape[0] < k:
        raise InputError(f"k-means needs at least {k} patches to fit {k} codes, got {x.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    init = xt[torch.randperm(xt.shape[0], generator=gen)[: max(init_points, k)]]
    centroids = _kmeans_pp(init, k, gen)
    inertia_prev = float("inf")
    done = 0
    for done in progress(range(1, iterations + 1), "k-means iterations (at most)", stage="quantize", unit="iteration"):
        assign, dist = nearest(xt, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, xt)
        counts = torch.bincount(assign, minlength=k)
        centroids = sums / counts.clamp(min=1)[:, None].to(sums.dtype)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            centroids[empty] = xt[torch.topk(dist, len(empty)).indices]
        inertia = float(dist.mean())
        if len(empty) == 0 and inertia_prev - inertia <= 1e-5 * max(inertia, 1e-12):
            break
        inertia_prev = inertia
    _, dist = nearest(xt, centroids)
    info = {"patches": int(xt.shape[0]), "iterations": done, "mean_sq_error": float(dist.mean()), "seed": seed}
    return centroids.numpy(), info


@dataclass
class KMeansCodebook:
    centroids: np.ndarray
    image_size: int
    patch_size: int
    resample: str
    fit_info: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> ImageSpec:
        return ImageSpec(self.image_size, self.resample)

    @property
    def arch(self) -> dict[str, Any]:
        return {"patch_size": self.patch_size, "normalisation": NORMALISATION}

    @property
    def fingerprint(self) -> str:
        return fingerprint("kmeans", self.arch, self.image, {"centroids": self.centroids})

    def spec(self) -> QuantizerSpec:
        g = self.image_size // self.patch_size
        return QuantizerSpec("kmeans", self.fingerprint, int(self.centroids.shape[0]), self.image, (g, g), self.arch)

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        meta = {
            "format": FORMAT,
            "image_size": str(self.image_size),
            "patch_size": str(self.patch_size),
            "resample": self.resample,
            "normalisation": NORMALISATION,
            "fingerprint": self.fingerprint,
            "fit": json.dumps(self.fit_info, sort_keys=True),
        }
        return save({"centroids": np.ascontiguousarray(self.centroids, dtype=np.float32)}, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> "KMeansCodebook":
        from safetensors.numpy import load

        try:
            (n,) = struct.unpack("<Q", data[:8])
            meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
            centroids = load(data)["centroids"]
        except Exception as err:
            raise InputError(f"{source}: not a vbpe k-means codebook ({type(err).__name__}: {err})") from None
        if meta.get("format") != FORMAT:
            raise InputError(f"{source}: not a vbpe k-means codebook (format {meta.get('format')!r})")
        cb = cls(centroids, int(meta["image_size"]), int(meta["patch_size"]), meta["resample"], json.loads(meta.get("fit", "{}")))
        if cb.fingerprint != meta.get("fingerprint"):
            raise InputError(f"{source}: codebook fingerprint mismatch (file says {meta.get('fingerprint')}, content is {cb.fingerprint}): corrupt file")
        return cb


def save_codebook(cb: KMeansCodebook, path: str, options: StorageOptions | None = None) -> None:
    storage.write_bytes(path, cb.to_bytes(), options)


def load_codebook(path: str, options: StorageOptions | None = None) -> KMeansCodebook:
    with storage.open_file(path, "rb", options) as f:
        return KMeansCodebook.from_bytes(f.read(), source=path)


def fit_codebook(images: list[np.ndarray], image_size: int, patch_size: int, resample: str, k: int,
                 max_patches: int, iterations: int, seed: int) -> KMeansCodebook:
    """Fit on preprocessed images (each (S, S, 3) uint8), using at most max_patches random patches."""
    if not images:
        raise InputError("no decodable images to fit the k-means codebook on")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    per_image = max(1, -(-max_patches // len(images)))
    chosen = []
    for img in images:
        p = extract_patches(img[None], patch_size).reshape(-1, patch_size * patch_size * 3)
        take = rng.choice(p.shape[0], size=min(per_image, p.shape[0]), replace=False)
        chosen.append(p[np.sort(take)])
    x = np.concatenate(chosen)[:max_patches]
    centroids, info = fit_centroids(x, k, iterations, seed)
    info.update(images=len(images), seconds=round(time.perf_counter() - start, 3))
    return KMeansCodebook(centroids, image_size, patch_size, resample, info)


class KMeansEncoder:
    def __init__(self, spec: QuantizerSpec, tensors: dict[str, np.ndarray], device: str = "cpu", precision: str = "fp32"):
        import torch

        self.patch = int(spec.arch["patch_size"])
        self.device = torch.device(device)
        self.centroids = torch.from_numpy(np.ascontiguousarray(tensors["centroids"], dtype=np.float32)).to(self.device)

    def encode(self, images: np.ndarray) -> np.ndarray:
        import torch

        b = images.shape[0]
        p = extract_patches(images, self.patch)
        g = p.shape[1]
        with torch.inference_mode():
            x = torch.from_numpy(p.reshape(-1, p.shape[-1])).to(self.device)
            if self.device.type == "cpu":
                idx, _ = nearest(x, self.centroids)
            else:
                c_sq = (self.centroids * self.centroids).sum(1)
                idx = torch.addmm(c_sq[None, :], x, self.centroids.T, alpha=-2.0).argmin(1)
        return idx.to(torch.int32).cpu().numpy().reshape(b, g, g)
