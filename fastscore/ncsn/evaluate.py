"""`fastscore eval`: samples of a checkpoint (drawn across torchrun's processes into one .npz, or read from
one), then FID, IS and KID on rank 0 (fastscore.ncsn.fidelity) against the run's training set."""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import distributed, fidelity
from .generate import generate, read_npz, to_uint8, write_npz


def run_directory(checkpoint: str) -> str:
    return checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))


def main(args: argparse.Namespace) -> int:
    from .cli import sampler_for

    wanted = (args.fid, args.inception_score, args.kid)
    fid, inception_score, kid = wanted if any(wanted) else (True, True, True)
    fidelity.fidelity()
    weights = fidelity.weights_path(args.inception_weights)  # before hours of sampling, not after
    out_dir = os.path.join(run_directory(args.checkpoint), "eval")
    group, device = distributed.init(args.device)
    try:
        sampler, config, ckpt, preprocess = sampler_for(args, str(device))
        if args.samples:
            samples = read_npz(args.samples) if group.is_main else None
        else:
            samples = generate(sampler, args.n, args.seed, group, batch=args.batch, progress=not args.quiet,
                               to_image=lambda x: to_uint8(preprocess.invert(x)))
    finally:
        distributed.finish(group)  # rank 0 alone computes the metrics: the others are done
    if samples is None:
        return 0
    if not args.samples:
        npz = write_npz(samples, args.npz or os.path.join(out_dir, f"samples-seed{args.seed}-n{args.n}.npz"))
        print(f"wrote {samples.shape[0]} samples to {npz}", file=sys.stderr)
    inception = fidelity.Inception(weights, device)
    ref = None
    if fid or kid:
        from .training import data_spec_from_config, load_training_data

        meta = ckpt.get("meta", {}).get("data", {})
        if args.data_root:
            config.data.root = args.data_root
        spec = data_spec_from_config(config, image_folder=(args.data_root or meta.get("root"))
                                     if meta.get("name") == "folder" else None)
        dataset = load_training_data(config, spec)
        describe = {"name": spec.name, "root": os.path.abspath(spec.root) if spec.root else None,
                    "image_size": spec.image_size, "split": spec.split, "subset": config.data.subset}
        stats, features, cache = fidelity.reference(dataset, describe, inception, args.reference_cache,
                                                    args.reference_limit, progress=not args.quiet)
        ref = (stats, features)
        print(f"reference: {features.shape[0]} {spec.name} training images, statistics in {cache}", file=sys.stderr)
    figures = fidelity.evaluate(samples, inception, fid, inception_score, kid, ref, progress=not args.quiet)
    figures["step"] = ckpt["step"]
    figures["seed"] = args.seed
    out = args.out or os.path.join(out_dir, f"metrics-seed{args.seed}-n{samples.shape[0]}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(figures, f, indent=2)
    parts = []
    if fid:
        parts.append(f"FID {figures['fid']:.3f}")
    if inception_score:
        parts.append(f"IS {figures['is_mean']:.3f} +- {figures['is_std']:.3f}")
    if kid:
        parts.append(f"KID {figures['kid_mean']:.5f} +- {figures['kid_std']:.5f}")
    print(f"{', '.join(parts)} ({samples.shape[0]} samples, step {ckpt['step']}); written to {out}")
    return 0
