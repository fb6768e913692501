"""The `fastscore` command line: one subcommand per job, each with --help.

torch is imported only once the arguments are parsed, so --help and argument errors answer at once.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys


def _number(kind: type, minimum: float, inclusive: bool, what: str):
    """An argparse type: `kind` values >= (or >) minimum, with a one-line error otherwise."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value == value) or value < minimum or (value == minimum and not inclusive) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    parse.__name__ = what  # what argparse names in its messages
    return parse


positive_int = _number(int, 1, True, "a positive integer")
count = _number(int, 0, True, "an integer >= 0")
positive_float = _number(float, 0.0, False, "a number > 0")


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    import fastscore

    print(f"fastscore {fastscore.__version__}, torch {torch.__version__}"
          f" (CUDA {torch.version.cuda or 'none'}), python {sys.version.split()[0]}")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
    else:
        print("GPU: none visible")
    print()
    print(f"{'backend':8} {'device':6} {'works':6} note")
    for row in fastscore.backends():
        works = "yes" if row["available"] else "no"
        note = "default (auto)" if row["auto"] else row["reason"]
        print(f"{row['backend']:8} {row['device']:6} {works:6} {note}")
    from fastscore.backend import ext as extension  # where the compiled kernels came from and what they were built with

    print(f"\n{extension.describe()}")
    return 0


def _parse_overrides(items: list[str]) -> dict:
    """--set section.key=value pairs; values are read as YAML scalars (numbers, true/false, strings)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"fastscore: --set expects section.key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _load_run_config(args: argparse.Namespace):
    from fastscore.ncsn.config import load_config

    overrides = _parse_overrides(args.set)
    for attr, key in (("n_iters", "training.n_iters"), ("batch_size", "training.batch_size"),
                      ("data_root", "data.root"), ("backend", "fastscore.backend"),
                      ("device", "fastscore.device"), ("seed", "fastscore.seed")):
        if getattr(args, attr, None) is not None:
            overrides[key] = getattr(args, attr)
    return load_config(args.config, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from fastscore.ncsn import training

    if args.resume:
        ckpt = training.load_checkpoint(args.workdir)
        from fastscore.ncsn.config import load_config

        # The run's own config, with only what the user changes now (e.g. a larger n_iters).
        overrides = _parse_overrides(args.set)
        if args.n_iters is not None:
            overrides["training.n_iters"] = args.n_iters
        if args.device is not None:
            overrides["fastscore.device"] = args.device
        config = load_config(ckpt["config"], overrides)
        image_folder = ckpt.get("meta", {}).get("data", {}).get("root") \
            if ckpt.get("meta", {}).get("data", {}).get("name") == "folder" else None
    else:
        config = _load_run_config(args)
        image_folder = args.image_folder
        if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
            print(f"fastscore: --workdir {args.workdir} is a file, not a directory; choose another --workdir",
                  file=sys.stderr)
            return 2
        if os.path.exists(os.path.join(args.workdir, training.CHECKPOINT_NAME)):
            print(f"fastscore: {args.workdir} already holds a checkpoint; pass --resume to continue it "
                  "or choose another --workdir", file=sys.stderr)
            return 2
    with training.run_lock(args.workdir):  # refused here, before data and model are built, if a run holds it
        pass
    from fastscore.ncsn import distributed

    group, device = distributed.init(config.fastscore.device)
    try:
        trainer = training.build_trainer(
            config, args.workdir, image_folder=image_folder, sample_every=args.sample_every,
            sample_count=args.sample_count, progress=not args.quiet, device=str(device), group=group,
            **({"time_limit": args.time_limit} if args.time_limit else {}),
            **({"cuda_graph": False} if args.no_cuda_graph else {}))
        if args.resume:
            trainer.resume(args.workdir)
            if group.is_main:
                print(f"resuming {args.workdir} at step {trainer.step}")
        result = trainer.train()
    finally:
        distributed.finish(group)
    if result.stopped == "diverged":
        if group.is_main:
            print(f"fastscore: {result.message}", file=sys.stderr)
        return 1
    if group.is_main:
        print(f"{result.stopped} at step {result.step} after {result.seconds:.1f} s, loss {result.last_loss:.4g}"
              f"{f' on {group.world} processes' if group.distributed else ''}; "
              f"checkpoint {os.path.join(args.workdir, training.CHECKPOINT_NAME)}")
    return 128 + result.signal if result.signal else 0  # as a shell reports a run ended by a signal


SAMPLER_NAMES = ("langevin", "consistent", "reverse", "pc", "euler", "heun")  # fastscore.samplers.SAMPLERS
# the options that only some samplers take, and which
ONLY_FOR = {"step_lr": ("langevin",), "denoise": ("langevin",), "eta": ("consistent",), "snr": ("pc",),
            "steps": ("langevin", "consistent", "pc")}


def sampler_option_error(name: str, args: argparse.Namespace) -> str | None:
    """A one-line error when an option is given to a sampler that does not take it, else None."""
    for attr, names in ONLY_FOR.items():
        if getattr(args, attr, None) not in (None, False) and name not in names:
            flag = "--" + attr.replace("_", "-")
            hint = " (it takes one step per noise level: choose fewer --levels)" if attr == "steps" else ""
            return f"{flag} is for the {' and '.join(names)} sampler{'s' if len(names) > 1 else ''}, " \
                   f"not {name}{hint}"
    return None


def sampler_options(args: argparse.Namespace) -> dict:
    """The sampler-specific keyword arguments the command line gives (only those set)."""
    return {key: getattr(args, key) for key in ("eta", "snr") if getattr(args, key, None) is not None}


class UsageError(ValueError):
    """Arguments that do not fit together (reported in one line, exit code 2)."""


def sampler_for(args: argparse.Namespace, device: str | None = None):
    from fastscore.ncsn import training
    from fastscore.ncsn.data import Preprocess

    problem = sampler_option_error(args.sampler, args)
    if problem:
        raise UsageError(problem)

    model, config, ckpt = training.load_model(args.checkpoint, device=device or args.device, ema=not args.no_ema,
                                              config=args.config)
    if args.backend is not None:
        config.fastscore.backend = args.backend
    try:
        sampler = training.make_sampler(model, config, ckpt["sigmas"], next(model.parameters()).device,
                                        n_steps_each=args.steps, step_lr=args.step_lr,
                                        denoise=True if args.denoise else None, sampler=args.sampler,
                                        levels=args.levels, **sampler_options(args))
    except ValueError as exc:  # a sampler argument out of range for this run (eta, levels, ...)
        raise UsageError(str(exc)) from exc
    preprocess = Preprocess(**ckpt["preprocess"])
    return sampler, config, ckpt, preprocess


def _describe(sampler, ckpt, no_ema: bool) -> str:
    weights = "EMA weights" if ckpt.get("ema") and not no_ema else "weights"
    source = f"ermongroup/{ckpt['published']} " if ckpt.get("published") else ""
    return (f"{source}step {ckpt['step']} {weights}, {sampler.name}, {sampler.evaluations} network evaluations "
            f"per image, seed {sampler.last_seed}")


def cmd_sample(args: argparse.Namespace) -> int:
    from fastscore.ncsn import distributed
    from fastscore.ncsn.generate import generate, to_uint8, write_folder, write_npz
    from fastscore.ncsn.images import save_png

    group, device = distributed.init(args.device)
    try:
        sampler, config, ckpt, preprocess = sampler_for(args, str(device))
        images = generate(sampler, args.n, args.seed, group, batch=args.batch, progress=not args.quiet,
                          to_image=lambda x: to_uint8(preprocess.invert(x)))
    finally:
        distributed.finish(group)
    if images is None:  # not rank 0: rank 0 writes
        return 0
    written = []
    if args.npz:
        written.append(write_npz(images, args.npz))
    if args.out_dir:
        written.append(write_folder(images, args.out_dir) + "/")
    if args.out or not written:
        save_png(images.float() / 255, args.out or "samples.png", nrow=args.nrow)
        written.append(args.out or "samples.png")
    where = f" on {group.world} processes" if group.distributed else ""
    print(f"wrote {args.n} samples ({_describe(sampler, ckpt, args.no_ema)}{where}) to {', '.join(written)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fastscore.ncsn import evaluate

    return evaluate.main(args)


def cmd_inpaint(args: argparse.Namespace) -> int:
    from fastscore.ncsn import training
    from fastscore.ncsn.images import save_png
    from fastscore.ncsn.inpainting import half_mask, inpaint_grid, reference_images

    sampler, config, ckpt, preprocess = sampler_for(args)
    spec = training.data_spec_from_config(config, split="test")
    meta = ckpt.get("meta", {}).get("data", {})
    if meta.get("name") == "folder":
        spec.name, spec.root = "folder", meta.get("root")
    refs, _ = reference_images(spec, args.n)
    device = next(sampler.model.parameters()).device
    mask = half_mask(refs.shape, args.keep)
    reference = preprocess.to_model_space(refs).to(device)
    filled = sampler.inpaint(reference.repeat(args.per_image, 1, 1, 1), mask.repeat(args.per_image, 1, 1, 1).to(device),
                             seed=args.seed, progress=not args.quiet)
    grid = inpaint_grid(refs, mask, preprocess.invert(filled).cpu(), args.per_image)
    save_png(grid, args.out, nrow=args.n)
    print(f"wrote {args.n} images x {args.per_image} completions ({_describe(sampler, ckpt, args.no_ema)}; kept "
          f"the {args.keep} half; rows: input, completions, original) to {args.out}")
    return 0


def cmd_compare_samplers(args: argparse.Namespace) -> int:
    from fastscore.ncsn import compare

    try:
        specs = [compare.parse_spec(text) for text in args.samplers or compare.DEFAULT_SPECS]
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        report = compare.compare(args.run, specs, seeds=args.seeds, n=args.n, device=args.device,
                                 progress=not args.quiet, config=args.config)
    except ValueError as exc:  # a spec that does not fit this run (eta, levels), or a run the classifier cannot judge
        raise UsageError(str(exc)) from exc
    report["command"] = "fastscore " + " ".join(args.argv)
    paths = compare.write(report, args.out)
    print(compare.markdown(report))
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fastscore.ncsn import demo

    return demo.main(out=args.out, minutes=args.minutes, seed=args.seed, quiet=args.quiet,
                     tiny=args.tiny, device=args.device)


def cmd_toy(args: argparse.Namespace) -> int:
    from fastscore.ncsn import toy  # deferred: only this subcommand needs it

    result = toy.run(n_samples=args.n_samples, seed=args.seed, progress=not args.quiet)
    print(toy.report(result))
    print(f"wrote {toy.draw(result, args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastscore",
        description="Train and sample NCSN score models with fused kernels.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of its one-line message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("info", help="versions, devices and which backends work where")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser(
        "toy", help="the paper's 2-D toy (Figure 3): plain vs annealed Langevin on a 0.2/0.8 mixture",
        description="Sample p = 0.2 N((-5,-5), I) + 0.8 N((5,5), I) with its exact score by plain Langevin "
        "(1000 steps) and by annealed Langevin (sigmas 20 ... 1, 10 levels x 100 steps), print the mode "
        "weights each recovers (plain gets them wrong, annealed right) and draw the samples. CPU, seconds.",
    )
    p.add_argument("--out", default="toy.png", help="PNG to write with the three scatter panels (default: toy.png)")
    p.add_argument("--seed", type=int, default=0, help="seed for the data, the start and the noise (default: 0)")
    p.add_argument("--n-samples", type=positive_int, default=1000, help="samples per method (default: 1000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_toy)
    p = sub.add_parser(
        "train", help="train an NCSN by annealed denoising score matching (checkpoints, logs, sample grids)",
        description="Train a noise-conditional score network with ncsn's annealed DSM loss (fastscore.perturb + "
        "fastscore.dsm_loss on the counter-based noise stream). Writes WORKDIR/checkpoint.pt (atomically; every "
        "training.snapshot_freq steps, at the end and on Ctrl-C), WORKDIR/log.csv (and TensorBoard events when "
        "tensorboard is installed) and WORKDIR/samples/step_*.png. --resume continues bit for bit. Data: MNIST "
        "without data.root is the bundled 5,000-digit subset (no download); MNIST, CIFAR10, CELEBA with "
        "--data-root, or --image-folder, are read from local files through torchvision.")
    p.add_argument("--config", default="mnist", help="a packaged config (mnist, mnist-small alias demo, cifar10, "
                   "celeba) or a YAML file in ncsn's anneal.yml schema (default: mnist)")
    p.add_argument("--workdir", required=True, help="run directory for checkpoint.pt, log.csv, samples/")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir from its checkpoint")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a config key, e.g. --set model.ngf=32 (repeatable)")
    p.add_argument("--n-iters", type=positive_int, help="train until this step (training.n_iters)")
    p.add_argument("--batch-size", type=positive_int, help="training.batch_size")
    p.add_argument("--data-root", help="local directory holding the dataset in torchvision's layout (data.root)")
    p.add_argument("--image-folder", help="train on a folder of images (one sub-folder per class)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... (fastscore.device)")
    p.add_argument("--backend", choices=("auto", "torch", "triton", "ext"), help="op backend (fastscore.backend)")
    p.add_argument("--seed", type=int, help="run seed: weights, data order, labels, noise (fastscore.seed)")
    p.add_argument("--no-cuda-graph", action="store_true",
                   help="run every training step eagerly (by default, on a GPU with the ext or triton backend, "
                   "one whole step is captured in a CUDA graph and replayed)")
    p.add_argument("--time-limit", type=positive_float, help="stop (and checkpoint) after this many seconds")
    p.add_argument("--sample-every", type=count, default=0,
                   help="write a sample grid every N steps (default: only at the end)")
    p.add_argument("--sample-count", type=count, default=36, help="images per sample grid; 0 for none (default: 36)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    def sampling_args(p):
        p.add_argument("checkpoint", help="a checkpoint file or a run directory (holding checkpoint.pt); also an "
                       "ermongroup/ncsn or ncsnv2 checkpoint file as published (with --config)")
        p.add_argument("--config", help="for an ncsn/ncsnv2 checkpoint: the config it was trained with, a packaged "
                       "one (mnist, cifar10, celeba) or its YAML (a fastscore checkpoint holds its own)")
        p.add_argument("--seed", type=int, default=0, help="seed of the start and the noise stream (default: 0)")
        p.add_argument("--sampler", choices=SAMPLER_NAMES, default="langevin",
                       help="langevin: annealed Langevin (default); consistent: consistent annealed sampling; "
                       "reverse: SMLD reverse diffusion (ancestral); pc: predictor-corrector (reverse diffusion + "
                       "Langevin corrector); euler, heun: the deterministic probability-flow ODE")
        p.add_argument("--steps", type=positive_int,
                       help="updates per noise level: Langevin steps (default: the config's), consistent steps "
                       "(default 1), corrector steps of pc (default 1)")
        p.add_argument("--steps-each", dest="steps", type=positive_int, help="the same as --steps (its older name)")
        p.add_argument("--levels", type=positive_int,
                       help="visit this many of the trained noise levels, evenly spaced, first and last included "
                       "(default: all)")
        p.add_argument("--step-lr", type=positive_float, help="langevin: step size at the smallest sigma "
                       "(default: the config's)")
        p.add_argument("--denoise", action="store_true", help="langevin: finish with NCSNv2's noise-free denoising "
                       "step (the other samplers always end on it)")
        p.add_argument("--eta", type=positive_float, help="consistent: step as a fraction of sigma_i^2 (default 1)")
        p.add_argument("--snr", type=positive_float, help="pc: the corrector's signal-to-noise ratio (default 0.16)")
        p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA ones")
        p.add_argument("--device", default=None, help="auto (default), cpu, cuda ...")
        p.add_argument("--backend", choices=("auto", "torch", "triton", "ext"), help="op backend")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("sample", help="draw samples from a trained checkpoint (annealed Langevin or another sampler)",
                       description="Load a checkpoint written by `fastscore train` (EMA weights when it has them), or "
                       "one published by ermongroup/ncsn or ncsnv2 with --config, and draw samples by annealed "
                       "Langevin dynamics (ncsn's schedule, the config's sampling section unless overridden) or "
                       "the --sampler chosen; write them as a PNG grid, an .npz (--npz) or one PNG each (--out-dir).")
    sampling_args(p)
    # --num-samples: torchrun reads an abbreviation of its own options (--n: --nnodes, --nproc-per-node) even after
    # the module's name, so under torchrun the long spelling is the one that works
    p.add_argument("--num-samples", "--n", dest="n", type=positive_int, default=64,
                   help="number of samples (default: 64; --n for short, except under torchrun)")
    p.add_argument("--nrow", type=positive_int, default=None, help="images per grid row (default: square)")
    p.add_argument("--out", default=None, help="PNG grid to write (default: samples.png when neither --npz nor "
                   "--out-dir is given)")
    p.add_argument("--npz", help="also (or instead) write the samples as uint8 `samples` (N, H, W, C) in this .npz")
    p.add_argument("--out-dir", help="also (or instead) write one PNG per sample into this folder")
    p.add_argument("--batch", type=positive_int, help="samples per sampler call on each process (default: all of "
                   "its share); the samples do not depend on it")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "eval", help="FID, Inception Score and KID of a checkpoint's samples (torch-fidelity)",
        description="Draw --n samples (across processes under torchrun; one .npz), then compute FID and KID against "
        "the run's training set (CIFAR-10 train set, an image folder, ...; its statistics are computed once and "
        "cached) and the Inception Score, with torch-fidelity's Inception-v3. Nothing is downloaded: the weights "
        "come from torch's hub cache or --inception-weights. Without --fid/--is/--kid, all three.")
    sampling_args(p)
    p.add_argument("--num-samples", "--n", dest="n", type=positive_int, default=50000,
                   help="number of samples (default: 50000, as the paper; --n for short, except under torchrun)")
    p.add_argument("--batch", type=positive_int, default=1000,
                   help="samples per sampler call on each process (default: 1000); the samples do not depend on it")
    p.add_argument("--fid", action="store_true", help="Frechet Inception Distance against the training set")
    p.add_argument("--is", dest="inception_score", action="store_true", help="Inception Score")
    p.add_argument("--kid", action="store_true", help="Kernel Inception Distance against the training set")
    p.add_argument("--samples", help="evaluate this .npz (written by sample --npz or eval) instead of sampling")
    p.add_argument("--npz", help="where to write the samples (default: RUN/eval/samples-seed<S>-n<N>.npz)")
    p.add_argument("--data-root", help="where the training set's files are, if not where the run read them")
    p.add_argument("--reference-limit", type=positive_int,
                   help="use the first N training images for the reference statistics (default: all)")
    p.add_argument("--reference-cache", help="directory of cached reference statistics "
                   "(default: ~/.cache/fastscore/reference)")
    p.add_argument("--inception-weights", help="torch-fidelity's Inception-v3 weights file (default: "
                   "<torch hub cache>/checkpoints/weights-inception-2015-12-05-6726825d.pth)")
    p.add_argument("--out", help="JSON file for the figures (default: RUN/eval/metrics-seed<S>-n<N>.json)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("inpaint", help="complete half-hidden held-out images with a trained checkpoint",
                       description="Hide half of each of N held-out images (the bundled subset's held-out split, "
                       "or the dataset's test split) and fill it by annealed Langevin inpainting (ncsn's: the "
                       "known half is re-noised to each level) or the --sampler chosen. Writes a grid: row 1 the "
                       "inputs (hidden half grey), then --per-image completions, then the originals.")
    sampling_args(p)
    p.add_argument("--n", type=positive_int, default=10,
                   help="number of images (default: 10, one per class when possible)")
    p.add_argument("--per-image", type=positive_int, default=3, help="completions per image (default: 3)")
    p.add_argument("--keep", choices=("top", "bottom", "left", "right"), default="top",
                   help="which half is kept (default: top; the bottom half is filled in)")
    p.add_argument("--out", default="inpaint.png", help="PNG to write (default: inpaint.png)")
    p.set_defaults(func=cmd_inpaint)

    p = sub.add_parser(
        "compare-samplers", help="network evaluations and digit-classifier quality of each sampler on a trained run",
        description="Sample a trained MNIST run (a run directory or checkpoint file, fastscore's or ncsn's with "
        "--config) with each sampler spec and several seeds, judge the samples with the demo's digit classifier, "
        "and print a table (network evaluations per image, mean confidence, the share confident at 0.9, classes "
        "covered, seconds per run); writes OUT/samplers.md and OUT/samplers.json with the checkpoint's identity "
        "and the machine's load. A spec is NAME[:STEPS][,KEY=VALUE...] with NAME one of "
        f"{', '.join(SAMPLER_NAMES)}, STEPS the updates per level, keys eta, snr, step_lr, levels, denoise; "
        "e.g. consistent:8,eta=0.5. The first spec is the baseline the goal line compares with.")
    p.add_argument("run", help="a run directory or checkpoint file")
    p.add_argument("--samplers", nargs="+", metavar="SPEC", default=None,
                   help="sampler specs (default: langevin as the run's config samples, then a few of each sampler)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per sampler, 0, 1, ... (default: 3)")
    p.add_argument("--n", type=positive_int, default=100, help="samples per run (default: 100)")
    p.add_argument("--config", help="for an ncsn/ncsnv2 checkpoint: the config it was trained with")
    p.add_argument("--out", default="compare-samplers", help="directory for the report (default: compare-samplers)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda ...")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare_samplers)

    p = sub.add_parser(
        "demo", help="train, sample and inpaint a small NCSN on the bundled MNIST subset, with a report",
        description="End to end on the CPU in about 7 minutes: train a small NCSN on the bundled 4,500 training "
        "digits within a time budget, sample a grid, inpaint half-hidden held-out digits, and measure both with a "
        "small digit classifier trained on the same split (mean confidence, classes covered), beside the same "
        "figures for held-out real digits. Writes PNGs, report.md and report.json to --out.")
    p.add_argument("--out", default="fastscore-demo", help="output directory (default: fastscore-demo)")
    p.add_argument("--minutes", type=positive_float, default=7.0,
                   help="wall-time budget for the whole demo (default: 7)")
    p.add_argument("--seed", type=int, default=0, help="seed of the whole run (default: 0)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda ...")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tiny network, few steps)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    for command in sub.choices.values():  # --debug after the command too (SUPPRESS: absent, the top level's holds)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _one_line(exc: BaseException) -> str:
    """The message of an error the user can fix, on one line (a DataLoader worker's re-raised error
    carries the worker's traceback: its last line is the message)."""
    text = str(exc).strip()
    if "Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


def _warning_line(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings' signature
    return f"fastscore: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a report records as its command
    if not args.debug:
        import warnings

        warnings.formatwarning = _warning_line  # a warning is one line, as the errors are
    from fastscore.backend.dispatch import BackendUnavailable
    from fastscore.ncsn.config import ConfigError
    from fastscore.ncsn.data import DataUnavailable
    from fastscore.ncsn.fidelity import EvalUnavailable
    from fastscore.ncsn.training import CheckpointError, DeviceUnavailable, RunLocked

    fixable = (UsageError, ConfigError, DataUnavailable, BackendUnavailable, DeviceUnavailable, CheckpointError,
               RunLocked, EvalUnavailable,
               FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
    try:
        return args.func(args)
    except fixable as exc:
        # What the user can fix (a path, a file, a dataset, a device, a config key): one line, exit code 2.
        if args.debug:
            raise
        print(f"fastscore: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C (the first one stops training cleanly)
        if args.debug:
            raise
        print("fastscore: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
