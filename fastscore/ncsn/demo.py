"""`fastscore demo`: train, sample and inpaint a small NCSN on the bundled MNIST subset, and measure it.

The whole command runs within a wall-time budget (default 7 minutes): after the backend is warmed up
(the C++ extension may compile on first use) and one network forward is timed, the time that
sampling, inpainting and the classifier will need is set aside and training gets the rest (capped by
the config's n_iters). So a slower machine trains fewer steps rather than overrunning. The report
(report.md, report.json) says how many steps it got and what the digit classifier makes of the
samples, beside the same figures for held-out real digits.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

import torch
from tqdm import tqdm

from . import metrics, training
from .config import load_config
from .data import DataSpec
from .images import save_png
from .inpainting import half_mask, inpaint_grid, reference_images

CONFIG = "demo"  # fastscore/ncsn/configs/mnist-small.yml
N_SAMPLES = 100
N_INPAINT = 10
PER_IMAGE = 3
KEEP = "top"
SLICE_SECONDS = 60.0
# Inpainting keeps the shorter chain (ncsn-style 15 steps per level at step_lr 0.003): measured on a
# 2,200-step checkpoint, the sampling section's longer chain (40 steps per level) made better samples
# (mean confidence 0.788 against 0.763) but completed fewer hidden halves as the original digit
# (17/30 against 22/30): the longer the chain, the further the free half drifts from the kept one.
INPAINT_STEPS_EACH = 15
INPAINT_STEP_LR = 0.003
# The samples: consistent annealed sampling (Jolicoeur-Martineau et al. 2021) at eta = 1 (each step
# moves to the denoised point, then re-noises to the next sigma), 10 steps per level: 50 network
# evaluations against annealed Langevin's 201 (`fastscore compare-samplers`, 2 seeds x 100 samples,
# quiet machine): on a 1,310-step checkpoint of this config mean confidence 0.808 (46% >= 0.9, 10
# classes) against 0.714-0.726, on another one 0.747 against 0.703; 20 or 40 steps per level at eta = 1
# lost classes (9 and 8 of 10 on the second checkpoint). The time saved goes to training.
SAMPLER = "consistent"
SAMPLE_STEPS_EACH = 10
SAMPLE_ETA = 1.0
ALL_THREADS = None  # torch's thread count when the demo started
TINY = {  # a seconds-long smoke run of the same code path (tests, `--tiny`)
    "model.ngf": 4, "model.num_classes": 3, "training.batch_size": 16, "training.n_iters": 4,
    "sampling.n_steps_each": 2,
}


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def _time_forward(model, batch: int, shape, device) -> float:
    """Seconds for one no-grad forward of `batch` images (best of two, after a warm-up call)."""
    x = torch.rand((batch,) + tuple(shape), device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    best = float("inf")
    with torch.no_grad():
        model.eval()
        model(x, y)
        for _ in range(2):
            t = time.perf_counter()
            model(x, y)
            best = min(best, time.perf_counter() - t)
        model.train()
    return best


def _pick_threads(model, shape, device) -> int:
    """The faster of all threads and one thread for a training-sized forward, and set it.

    On a CPU shared with other work, threads that wait for each other at every op can be several
    times slower than one thread (measured 3x on a loaded 2-core machine); on an idle one, all
    threads win. Costs a few forwards.
    """
    if device.type != "cpu" or (os.cpu_count() or 1) < 2:
        return torch.get_num_threads()
    many = os.cpu_count() if ALL_THREADS is None else ALL_THREADS
    timings = {}
    for n in (many, 1):
        torch.set_num_threads(n)
        timings[n] = _time_forward(model, 32, shape, device)
    best = min(timings, key=timings.get)
    torch.set_num_threads(best)
    return best


def main(out: str = "fastscore-demo", minutes: float = 7.0, seed: int = 0, quiet: bool = False,
         tiny: bool = False, device: str | None = None) -> int:
    global ALL_THREADS
    threads = ALL_THREADS = torch.get_num_threads()
    try:
        return _run(out, minutes, seed, quiet, tiny, device)
    finally:
        torch.set_num_threads(threads)  # the run may have chosen fewer


def _run(out: str, minutes: float, seed: int, quiet: bool, tiny: bool, device: str | None) -> int:
    t0 = time.perf_counter()
    budget = minutes * 60.0
    os.makedirs(out, exist_ok=True)
    overrides = {"fastscore.seed": seed, **(TINY if tiny else {})}
    if device is not None:
        overrides["fastscore.device"] = device
    config = load_config(CONFIG, overrides)
    n_samples, n_inpaint, per_image = (16, 4, 2) if tiny else (N_SAMPLES, N_INPAINT, PER_IMAGE)

    # Warm the op backend first: a first use may compile the C++ extension, which must not be
    # counted against training's share of the budget after it has been set.
    dev = training.resolve_device(config.fastscore.device)
    import fastscore

    fastscore.perturb(torch.zeros(2, 1, 2, 2, device=dev), torch.ones(2, device=dev), 0)
    backend = fastscore.backend.dispatch.resolve_name(None, dev)
    run_dir = os.path.join(out, "run")
    for stale in ("log.csv", training.CHECKPOINT_NAME):  # the demo always starts afresh
        if os.path.exists(os.path.join(run_dir, stale)):
            os.remove(os.path.join(run_dir, stale))
    trainer = training.build_trainer(config, run_dir, sample_count=0, progress=not quiet)
    shape = (config.data.channels, config.data.image_size, config.data.image_size)

    # The digit classifier first (trained on the same split), so that its real cost on this machine,
    # busy or not, is spent before training's share of the budget is set.
    threads = _pick_threads(trainer.model, shape, dev)
    t_c = time.perf_counter()
    clf = metrics.train_classifier(**({"epochs": 1, "width": 8} if tiny else {}), seed=seed)
    classifier_seconds = time.perf_counter() - t_c

    # What sampling + inpainting will cost: their network evaluations of each batch, with room for the
    # machine getting busier meanwhile.
    levels = config.model.num_classes
    sample_steps = config.sampling.n_steps_each if tiny else SAMPLE_STEPS_EACH
    inpaint_steps = min(config.sampling.n_steps_each, INPAINT_STEPS_EACH)

    def samplers(model):
        """The demo's sampler and inpainter for `model` (the trained network's EMA copy, at the end)."""
        sampler = training.make_sampler(model, config, trainer.sigmas, dev, n_steps_each=sample_steps,
                                        sampler=SAMPLER, eta=SAMPLE_ETA)
        inpainter = training.make_sampler(model, config, trainer.sigmas, dev, n_steps_each=inpaint_steps,
                                          step_lr=INPAINT_STEP_LR)
        return sampler, inpainter

    forwards, inpaint_forwards = (s.evaluations for s in samplers(trainer.model))
    t_sample = _time_forward(trainer.model, n_samples, shape, dev)
    t_inpaint = _time_forward(trainer.model, n_inpaint * per_image, shape, dev)
    expected = forwards * t_sample + inpaint_forwards * t_inpaint
    # The estimate comes from forwards timed just now on this machine (report.json keeps it beside the
    # time taken); a quarter more covers the machine getting busier meanwhile, plus the reports and files.
    reserve = 1.25 * expected + (3.0 if tiny else 15.0)
    time_limit = max(budget - (time.perf_counter() - t0) - reserve, 5.0)
    trainer.settings.time_limit = time_limit
    _log(f"fastscore demo: {backend} backend on {dev} ({threads} threads); training for up to {time_limit:.0f} s "
         f"(at most {config.training.n_iters} steps), then {n_samples} samples and {n_inpaint}x{per_image} "
         f"inpaintings ({forwards} / {inpaint_forwards} network evaluations each, about {expected:.0f} s)", quiet)

    # 1. Train.
    t_train = time.perf_counter()
    deadline = t_train + time_limit
    losses, thread_log = [], [threads]
    # One bar for the whole time-budgeted training (steps and rate; no step-count ETA to mislead).
    bar = tqdm(desc=f"train ({time_limit:.0f} s budget)", unit="step", disable=quiet, dynamic_ncols=True)
    try:
        while True:
            # Train in slices of at most a minute, re-choosing the thread count between them: how busy
            # the machine is can change while the demo runs.
            trainer.settings.time_limit = max(min(SLICE_SECONDS, deadline - time.perf_counter()), 1e-3)
            result = trainer.train(bar=bar)
            losses += result.losses
            if result.stopped != "time_limit" or time.perf_counter() >= deadline:
                break
            threads = _pick_threads(trainer.model, shape, dev)
            thread_log.append(threads)
    finally:
        bar.close()
    result.losses = losses
    train_seconds = time.perf_counter() - t_train
    if result.stopped in ("diverged", "interrupted"):
        print(f"fastscore demo: training {result.stopped}" + (f": {result.message}" if result.message else "")
              + "; no samples drawn", file=sys.stderr)
        return 1 if result.stopped == "diverged" else 128 + (result.signal or 2)
    _log(f"trained {result.step} steps in {train_seconds:.0f} s ({result.stopped}), last loss "
         f"{result.last_loss:.4g}", quiet)

    model = trainer.sampling_model().eval()
    thread_log.append(_pick_threads(model, shape, dev))  # for sampling

    # 2. Sample.
    preprocess = trainer.preprocess
    sampler, inpainter = samplers(model)
    t_s = time.perf_counter()
    samples = preprocess.invert(sampler.sample(n_samples, seed=seed, progress=not quiet)).cpu()
    sample_seconds = time.perf_counter() - t_s
    save_png(samples, os.path.join(out, "samples.png"), nrow=10 if n_samples >= 10 else None)

    # 3. Inpaint held-out digits (never trained on), one per class.
    refs, ref_labels = reference_images(DataSpec(image_size=config.data.image_size, split="test"), n_inpaint)
    mask = half_mask(refs.shape, KEEP)
    t_i = time.perf_counter()
    filled = inpainter.inpaint(preprocess.to_model_space(refs).repeat(per_image, 1, 1, 1).to(dev),
                             mask.repeat(per_image, 1, 1, 1).to(dev), seed=seed + 1, progress=not quiet)
    filled = preprocess.invert(filled).cpu()
    inpaint_seconds = time.perf_counter() - t_i
    save_png(inpaint_grid(refs, mask, filled, per_image), os.path.join(out, "inpaint.png"), nrow=n_inpaint)

    # 4. Measure with the digit classifier (trained on the same training split).
    real = metrics.real_digit_report(clf)
    real_same_n = metrics.real_digit_report(clf, count=n_samples, seed=seed)
    gen = metrics.digit_report(clf, samples)
    inpainted = metrics.digit_report(clf, filled, ref_labels.repeat(per_image))
    masked_only = metrics.digit_report(clf, refs * mask, ref_labels)
    total = time.perf_counter() - t0

    report = {
        "command": "fastscore demo",
        "wall_seconds": round(total, 1),
        "budget_seconds": budget,
        "machine": {"cpu_threads": thread_log, "cpu_count": os.cpu_count(), "device": str(dev), "backend": backend,
                    "platform": platform.platform(), "torch": torch.__version__},
        "recipe": recipe(config.to_dict(), sampler.name, sample_steps, SAMPLE_ETA),
        "config": config.to_dict(),
        "training": {"steps": result.step, "stopped": result.stopped, "seconds": round(train_seconds, 1),
                     "time_limit": round(time_limit, 1), "last_loss": result.last_loss,
                     "loss_curve": result.losses, "images": trainer.meta["images"],
                     "ema_rate": trainer.settings.ema_rate},
        "sampling": {"count": n_samples, "sampler": sampler.name, "levels": levels, "steps_each": sample_steps,
                     "eta": SAMPLE_ETA, "evaluations": forwards,
                     "expected_seconds_with_inpainting": round(expected, 1),
                     "seconds": round(sample_seconds, 1)},
        "inpainting": {"images": n_inpaint, "per_image": per_image, "kept_half": KEEP,
                       "steps_each": inpaint_steps, "step_lr": INPAINT_STEP_LR,
                       "seconds": round(inpaint_seconds, 1)},
        "classifier": {"held_out_accuracy": real.accuracy, "seconds": round(classifier_seconds, 1)},
        "figures": {"samples": gen.as_dict(), "real_held_out": real.as_dict(),
                    f"real_held_out_{n_samples}": real_same_n.as_dict(), "inpainted": inpainted.as_dict(),
                    "kept_half_only": masked_only.as_dict()},
        "files": {"samples": "samples.png", "inpaint": "inpaint.png", "checkpoint": "run/checkpoint.pt",
                  "log": "run/log.csv"},
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(markdown(report))
    _log("\n" + summary(report) + f"\nwrote {out}/samples.png, inpaint.png, report.md, report.json", quiet)
    return 0


def recipe(config: dict, sampler: str, steps_each: int, eta: float) -> str:
    """One line naming the demo's recipe: the run's config (as stored in report.json) and the sampler."""
    m, o, t, f = config["model"], config["optim"], config["training"], config["fastscore"]
    if m["arch"].startswith("NCSNv2"):
        net = (f"NCSNv2 recipe (Song & Ermon 2020): one unconditional {m['arch']} network whose output is divided "
               f"by sigma")
    else:
        net = f"NCSN (Song & Ermon 2019): the noise-conditional {m['arch']}"
    parts = [net, f"ngf {m['ngf']}",
             f"{m['num_classes']} {t['noise_schedule']} noise levels {m['sigma_begin']:g} to {m['sigma_end']:g}"
             + (f", drawn with probability proportional to sigma^{t['level_power']:g}" if t.get("level_power") else ""),
             f"batch {t['batch_size']}, Adam lr {o['lr']:g}",
             f"EMA {f['ema_rate']:g}" if f["ema"] else "no EMA",
             f"{sampler} sampling (Jolicoeur-Martineau et al. 2021), {steps_each} steps per level at eta {eta:g}, "
             "ending on the denoised point (Tweedie)"]
    return "; ".join(parts)


def _row(name: str, r: dict) -> str:
    acc = "" if r.get("accuracy") is None else f"{100 * r['accuracy']:.0f}%"
    return (f"| {name} | {r['count']} | {r['mean_confidence']:.3f} | {100 * r['confident_fraction']:.0f}% | "
            f"{r['classes_covered']}/10 | {acc} |")


def summary(report: dict) -> str:
    fig, tr = report["figures"], report["training"]
    n = report["sampling"]["count"]
    return "\n".join([
        f"fastscore demo in {report['wall_seconds']:.0f} s: {tr['steps']} training steps "
        f"({tr['seconds']:.0f} s), sampling {report['sampling']['seconds']:.0f} s, inpainting "
        f"{report['inpainting']['seconds']:.0f} s",
        f"recipe: {report['recipe']}",
        f"digit classifier (held-out accuracy {100 * report['classifier']['held_out_accuracy']:.1f}%), "
        "mean confidence / classes covered:",
        f"  samples        {fig['samples']['mean_confidence']:.3f}  {fig['samples']['classes_covered']}/10",
        f"  real held-out  {fig[f'real_held_out_{n}']['mean_confidence']:.3f}  "
        f"{fig[f'real_held_out_{n}']['classes_covered']}/10   ({n} random held-out digits)",
        f"  inpainted      {fig['inpainted']['mean_confidence']:.3f}  accuracy "
        f"{100 * fig['inpainted']['accuracy']:.0f}% (kept half alone: "
        f"{100 * fig['kept_half_only']['accuracy']:.0f}%)",
    ])


def markdown(report: dict) -> str:
    fig, tr, s = report["figures"], report["training"], report["sampling"]
    n = s["count"]
    c = report["config"]
    return "\n".join([
        "# fastscore demo report",
        "",
        f"Whole command: {report['wall_seconds']:.0f} s (budget {report['budget_seconds']:.0f} s) on "
        f"{report['machine']['device']} (torch threads per training slice: {report['machine']['cpu_threads']}, "
        f"{report['machine']['backend']} backend).",
        "",
        f"Recipe: {report['recipe']}.",
        "",
        f"- Training: {c['model']['arch']}, ngf {c['model']['ngf']}, {c['model']['num_classes']} noise levels "
        f"{c['model']['sigma_begin']} to {c['model']['sigma_end']}, batch {c['training']['batch_size']}, "
        f"lr {c['optim']['lr']}, EMA {tr['ema_rate']}; {tr['steps']} steps in {tr['seconds']:.0f} s "
        f"({tr['stopped']}) on {tr['images']} bundled MNIST digits; last loss {tr['last_loss']:.4g}.",
        f"- Sampling: {n} samples, {s['sampler']} sampling, {s['levels']} levels x {s['steps_each']} steps at eta "
        f"{s['eta']:g} ({s['evaluations']} network evaluations per image): {s['seconds']:.0f} s. `samples.png`.",
        f"- Inpainting: {report['inpainting']['images']} held-out digits (one per class), the "
        f"{report['inpainting']['kept_half']} half kept, {report['inpainting']['per_image']} completions each "
        f"({report['inpainting']['steps_each']} steps per level, step_lr {report['inpainting']['step_lr']:g}): "
        f"{report['inpainting']['seconds']:.0f} s. `inpaint.png` (rows: input, completions, original).",
        "",
        "A small CNN trained on the same 4,500 training digits "
        f"({100 * report['classifier']['held_out_accuracy']:.1f}% accurate on the 500 held-out ones) judges "
        "the images. Mean confidence is the mean top softmax probability (the classifier was trained to be "
        "unsure on noise: about 0.1 there); classes covered counts classes predicted with probability "
        ">= 0.5.",
        "",
        "| images | count | mean confidence | confident (>= 0.9) | classes covered | accuracy |",
        "|---|---|---|---|---|---|",
        _row("generated samples", fig["samples"]),
        _row(f"real held-out digits ({n} random)", fig[f"real_held_out_{n}"]),
        _row("real held-out digits (all)", fig["real_held_out"]),
        _row("inpainted (vs the original's class)", fig["inpainted"]),
        _row("kept half alone (no inpainting)", fig["kept_half_only"]),
        "",
        f"Predicted classes of the samples (0-9): {fig['samples']['histogram']}",
        "",
    ])
