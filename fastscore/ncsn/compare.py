"""`fastscore compare-samplers`: what each sampler costs and what its samples look like, on one trained run.

For each sampler spec, samples are drawn with several seeds and judged by the demo's digit classifier
(fastscore.ncsn.metrics): network evaluations per image, mean confidence, the share confident at 0.9,
classes covered, and the wall time of a run. The report names the checkpoint it measured (path, step,
the first 12 hex digits of its SHA-256) and the machine's load, so a table can say what it measured.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from . import metrics, training
from .data import Preprocess

# The README's table: annealed Langevin as the run's config samples (the baseline), then each sampler at
# one to three budgets, up to a fifth of the baseline's network evaluations on the demo's 5-level run.
DEFAULT_SPECS = ("langevin", "langevin:8", "langevin:7,step_lr=0.006", "consistent:1", "consistent:4,eta=0.6",
                 "consistent:8,eta=0.6", "reverse", "pc:1", "pc:7,snr=0.5", "euler", "heun")
OPTION_TYPES = {"eta": float, "snr": float, "step_lr": float, "levels": int, "denoise": lambda v: v == "true"}


@dataclass
class Spec:
    """A sampler and its settings, written NAME[:STEPS][,KEY=VALUE...], e.g. consistent:8,eta=0.5."""

    text: str
    name: str
    steps: int | None = None
    options: dict = field(default_factory=dict)


def parse_spec(text: str) -> Spec:
    from ..samplers import SAMPLERS

    head, *pairs = text.split(",")
    name, _, steps = head.partition(":")
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r} in {text!r}; known: {', '.join(SAMPLERS)}")
    try:
        spec = Spec(text, name, int(steps) if steps else None)
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or key not in OPTION_TYPES:
                raise ValueError
            spec.options[key] = OPTION_TYPES[key](value)
    except ValueError:
        raise ValueError(f"cannot read the sampler spec {text!r}: write NAME[:STEPS][,KEY=VALUE...] with keys "
                         f"{', '.join(OPTION_TYPES)}, e.g. consistent:8,eta=0.5") from None
    return spec


def checkpoint_identity(path: str) -> dict:
    """Where the checkpoint is and which one it is (its SHA-256), for the table's caption."""
    path = training.checkpoint_path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": os.path.abspath(path), "sha256": digest.hexdigest()[:12]}


def compare(checkpoint: str, specs: list[Spec], seeds: int = 3, n: int = 100, device=None,
            progress: bool = True, config=None) -> dict:
    """Sample n images per seed with every spec and judge them; returns the report (see markdown)."""
    model, run_config, ckpt = training.load_model(checkpoint, device=device, config=config)
    d = run_config.data
    if (d.channels, d.image_size) != (1, 28):
        raise ValueError(f"the digit classifier judges 28x28 grey images; this run's are {d.channels}x"
                         f"{d.image_size}x{d.image_size}")
    preprocess = Preprocess(**ckpt["preprocess"])
    dev = next(model.parameters()).device
    samplers = [training.make_sampler(model, run_config, ckpt["sigmas"], dev, n_steps_each=spec.steps,
                                      sampler=spec.name, **spec.options) for spec in specs]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    classifier = metrics.train_classifier(seed=0)
    rows = []
    bar = tqdm(total=len(specs) * seeds, desc="compare samplers", unit="run", disable=not progress)
    try:
        for spec, sampler in zip(specs, samplers, strict=True):
            runs = []
            for seed in range(seeds):
                t = time.perf_counter()
                x = sampler.sample(n, seed=seed, progress=False)
                seconds = time.perf_counter() - t
                report = metrics.digit_report(classifier, preprocess.invert(x).cpu())
                runs.append({"seed": seed, "seconds": round(seconds, 2), **asdict(report)})
                bar.update()
            rows.append({"spec": spec.text, "sampler": sampler.name, "evaluations": sampler.evaluations,
                         "mean_confidence": _mean(runs, "mean_confidence"),
                         "confidence_range": [min(r["mean_confidence"] for r in runs),
                                              max(r["mean_confidence"] for r in runs)],
                         "confident_fraction": _mean(runs, "confident_fraction"),
                         "classes_covered": _mean(runs, "classes_covered"),
                         "seconds": _mean(runs, "seconds"), "runs": runs})
    finally:
        bar.close()
    real = metrics.real_digit_report(classifier, count=n, seed=0)
    return {
        "checkpoint": {**checkpoint_identity(checkpoint), "step": ckpt["step"], "published": ckpt.get("published")},
        "samples_per_run": n, "seeds": seeds,
        "machine": {"device": str(dev), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()],
                    "platform": platform.platform(), "torch": torch.__version__},
        "seconds": round(time.perf_counter() - t0, 1),
        "rows": rows, "real_held_out": asdict(real), "goal": goal(rows),
    }


def _mean(runs: list[dict], key: str) -> float:
    return round(sum(r[key] for r in runs) / len(runs), 4)


def goal(rows: list[dict], within: float = 0.02, fraction: float = 0.2) -> list[str]:
    """The specs whose mean confidence is within `within` of the first row's (the baseline, annealed
    Langevin as the run's config samples) with at most `fraction` of its network evaluations."""
    if not rows:
        return []
    base = rows[0]
    return [r["spec"] for r in rows[1:] if r["evaluations"] <= fraction * base["evaluations"]
            and r["mean_confidence"] >= base["mean_confidence"] - within]


def markdown(report: dict) -> str:
    c, m = report["checkpoint"], report["machine"]
    lines = [
        f"Checkpoint `{c['path']}` (step {c['step']}, sha256 {c['sha256']}); {report['samples_per_run']} samples "
        f"per run, seeds 0..{report['seeds'] - 1}; {m['device']}, {m['torch_threads']} torch threads on "
        f"{m['cpu_count']} cores, load average {m['load_average_before'][0]} before and "
        f"{m['load_average_after'][0]} after; {report['seconds']:.0f} s in all.",
        "",
        "| sampler | network evaluations per image | mean confidence (range over seeds) | confident (>= 0.9) "
        "| classes covered | seconds per run |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lo, hi = r["confidence_range"]
        lines.append(f"| `{r['spec']}` ({r['sampler']}) | {r['evaluations']} | {r['mean_confidence']:.3f} "
                     f"({lo:.3f}-{hi:.3f}) | {100 * r['confident_fraction']:.0f}% | {r['classes_covered']:.1f} "
                     f"| {r['seconds']:.1f} |")
    real = report["real_held_out"]
    lines.append(f"| real held-out digits ({real['count']}) | - | {real['mean_confidence']:.3f} | "
                 f"{100 * real['confident_fraction']:.0f}% | {real['classes_covered']} | - |")
    reached = report["goal"]
    lines += ["", "Within 0.02 of the first row's mean confidence with at most a fifth of its network evaluations: "
              + (", ".join(f"`{s}`" for s in reached) if reached else "none") + "."]
    return "\n".join(lines) + "\n"


def write(report: dict, out: str) -> tuple[str, str]:
    os.makedirs(out, exist_ok=True)
    paths = os.path.join(out, "samplers.json"), os.path.join(out, "samplers.md")
    with open(paths[0], "w") as f:
        json.dump(report, f, indent=2)
    with open(paths[1], "w") as f:
        f.write(markdown(report))
    return paths
