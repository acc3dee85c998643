"""`--fit-kmeans`: fit the k-means codebook on a sample of the corpus about to be quantized."""
from __future__ import annotations

import logging
import math

import numpy as np

from pipeline import storage
from pipeline.metrics import progress
from pipeline.ingest.preprocess import ImageSpec
from pipeline.ingest.reader import Decoded, iter_shard
from pipeline.quantize.kmeans import KMeansCodebook, fit_codebook, save_codebook
from schemas.base import StorageOptions
from schemas.quantize import IngestOptions, KMeansQuantizerConfig

log = logging.getLogger(__name__)


def sample_images(urls: list[str], spec: ImageSpec, opts: IngestOptions, options: StorageOptions | None, n: int) -> list[np.ndarray]:
    """Up to n decodable images, an even share from each shard in order (deterministic for a given input set)."""
    per_shard = max(1, math.ceil(n / len(urls)))
    images: list[np.ndarray] = []
    for url in progress(urls, "k-means fit: decoding sample images", stage="quantize", unit="shard"):
        taken = 0
        try:
            for item in iter_shard(url, spec, opts, options):
                if isinstance(item, Decoded):
                    images.append(item.pixels)
                    taken += 1
                    if taken >= per_shard or len(images) >= n:
                        break
        except Exception as err:
            log.warning("k-means fit: skipping unreadable shard %s (%s)", url, err)
        if len(images) >= n:
            break
    return images


def ensure_codebook(q: KMeansQuantizerConfig, urls: list[str], opts: IngestOptions, options: StorageOptions | None) -> bool:
    """Fit and save the codebook unless the file already exists (a re-run reuses it). True if it fitted."""
    if storage.exists(q.codebook, options):
        log.info("k-means codebook %s exists: reusing it", q.codebook)
        return False
    spec = ImageSpec(q.image_size, q.resample)
    images = sample_images(urls, spec, opts, options, q.fit_images)
    log.info("fitting k-means: %d codes on up to %d patches of %d images", q.codebook_size, q.fit_patches, len(images))
    cb: KMeansCodebook = fit_codebook(images, q.image_size, q.patch_size, q.resample, q.codebook_size,
                                      q.fit_patches, q.fit_iterations, q.seed)
    save_codebook(cb, q.codebook, options)
    log.info("k-means codebook %s: fingerprint %s, %s", q.codebook, cb.fingerprint, cb.fit_info)
    return True
