"""FID, Inception Score and KID of uint8 images through torch-fidelity (its Inception-v3, the port of the
TensorFlow network the published figures use, and its formulas): nothing here re-implements a metric.

Nothing is downloaded: the Inception weights are read from torch-fidelity's place in torch's hub cache
(`weights_path`) or from a file the user names, and a missing file is one line saying where to put it.
The reference statistics of a dataset (feature mean and covariance, and the features KID needs) are
computed once and cached, keyed by the dataset, the number of images and the weights file's hash.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name for it in the hub cache
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
FEATURES = ("2048", "logits_unbiased")  # the pool features (FID, KID) and the logits (IS)


class EvalUnavailable(RuntimeError):
    """What evaluation needs (the library, the weights) is not there; the message says what to do."""


def fidelity() -> Any:
    try:
        import torch_fidelity
    except ImportError as exc:
        raise EvalUnavailable("FID, IS and KID are computed by torch-fidelity, which is not installed: "
                              f"pip install 'fastscore[eval]' ({exc})") from None
    return torch_fidelity


def weights_path(given: str | None = None) -> str:
    """The Inception weights file: `given`, else torch-fidelity's file in torch's hub cache; one clear
    error when it is not there (fastscore never downloads at run time)."""
    path = given or os.path.join(torch.hub.get_dir(), "checkpoints", WEIGHTS_FILE)
    if not os.path.isfile(path):
        where = "--inception-weights" if given else "torch's hub cache"
        raise EvalUnavailable(f"no Inception weights at {path} ({where}); fastscore downloads nothing at run time: "
                              f"fetch {WEIGHTS_URL} once and put it at that path, or pass --inception-weights FILE")
    return path


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Inception:
    """torch-fidelity's Inception-v3 feature extractor, loaded from a local weights file."""

    def __init__(self, weights: str, device: torch.device | str = "cpu", batch: int = 64):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        fidelity()
        self.weights = weights
        self.model = FeatureExtractorInceptionV3("inception-v3-compat", list(FEATURES),
                                                 feature_extractor_weights_path=weights).to(device)
        self.device = torch.device(device)
        self.batch = batch

    @torch.no_grad()
    def features(self, images: torch.Tensor | Iterable[torch.Tensor], total: int | None = None,
                 progress: bool = True, desc: str = "Inception features") -> tuple[torch.Tensor, torch.Tensor]:
        """(pool features (N, 2048), logits (N, 1008)) of uint8 images (N, C, H, W), C = 1 or 3, given as
        one tensor or as batches; float64 on the CPU."""
        if isinstance(images, torch.Tensor):
            total = images.shape[0]
            images = images.split(self.batch)
        pools, logits = [], []
        with tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
            for x in images:
                if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
                    raise ValueError(f"expected uint8 images (N, 1 or 3, H, W), got {x.dtype} {tuple(x.shape)}")
                x = x.to(self.device)
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                pool, logit = self.model(x)
                pools.append(pool.double().cpu())
                logits.append(logit.double().cpu())
                bar.update(x.shape[0])
        return torch.cat(pools), torch.cat(logits)


def statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """{"mu", "sigma"}: torch-fidelity's mean and covariance of the features."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return dict(fid_features_to_statistics(features))


def frechet_distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    return float(fid_statistics_to_metric(a, b, verbose=False)[KEY_METRIC_FID])


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` splits, torch-fidelity's formula and shuffling."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    out = isc_features_to_metric(logits, splits=splits)
    return float(out[KEY_METRIC_ISC_MEAN]), float(out[KEY_METRIC_ISC_STD])


def kernel_inception_distance(a: torch.Tensor, b: torch.Tensor, subsets: int = 100,
                              subset_size: int = 1000) -> tuple[float, float]:
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over random subsets (at most the smaller set)."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = min(subset_size, a.shape[0], b.shape[0])
    out = kid_features_to_metric(a, b, kid_subsets=subsets, kid_subset_size=size, verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


# ----------------------------------------------------------------------------- reference statistics

def default_cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "fastscore", "reference")


def _uint8_batches(dataset: Any, count: int, batch: int) -> Iterator[torch.Tensor]:
    for start in range(0, count, batch):
        x = torch.stack([dataset[i][0] for i in range(start, min(start + batch, count))])
        yield x.clamp(0, 1).mul(255).round().to(torch.uint8)


def reference(dataset: Any, describe: dict[str, Any], inception: Inception, cache_dir: str | None = None,
              limit: int | None = None, progress: bool = True) -> tuple[dict[str, np.ndarray], torch.Tensor, str]:
    """(FID statistics, pool features, the cache file) of the first `limit` (default all) images of a
    dataset of [0, 1] images, computed once and then read from the cache. `describe` names the dataset
    (name, root, image size, split): with the count and the weights' hash it keys the cache."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    key = json.dumps({**describe, "images": count, "weights": file_digest(inception.weights)}, sort_keys=True)
    name = f"{describe.get('name', 'data')}-{count}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    path = os.path.join(cache_dir or default_cache_dir(), name)
    if os.path.isfile(path):
        with np.load(path) as f:
            return {"mu": f["mu"], "sigma": f["sigma"]}, torch.from_numpy(f["features"]), path
    pool, _ = inception.features(_uint8_batches(dataset, count, inception.batch), total=count, progress=progress,
                                 desc="reference features")
    stats = statistics(pool)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, mu=stats["mu"], sigma=stats["sigma"], features=pool.numpy(), key=np.array(key))
    os.replace(tmp, path)  # a crash leaves no half-written cache behind
    return stats, pool, path


def evaluate(samples: torch.Tensor, inception: Inception, fid: bool, inception_score_: bool, kid: bool,
             ref: tuple[dict[str, np.ndarray], torch.Tensor] | None, progress: bool = True) -> dict[str, float]:
    """The metrics asked for, of uint8 samples (N, C, H, W) against the reference (stats, features)."""
    pool, logits = inception.features(samples, progress=progress, desc="sample features")
    out: dict[str, float] = {"samples": float(samples.shape[0])}
    if fid:
        assert ref is not None
        out["fid"] = frechet_distance(statistics(pool), ref[0])
    if inception_score_:
        out["is_mean"], out["is_std"] = inception_score(logits, splits=min(10, samples.shape[0]))
    if kid:
        assert ref is not None
        out["kid_mean"], out["kid_std"] = kernel_inception_distance(pool, ref[1])
    return out
