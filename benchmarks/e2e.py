"""End to end: an ermongroup/ncsn-equivalent reference path against fastscore's fast path, one process.

    reference  CondRefineNetDilated (CIFAR-10: ngf 128, 32 px, 3 channels, 10 levels) with every norm
               on the plain-PyTorch backend, float32, contiguous, eager: the computation ncsn's code
               does, with its loss written as ncsn writes it (torch.randn_like noise)
    fast       the same weights with norm + ELU fused (fuse_norm_act), the default fused backend,
               channels_last end to end, optional bfloat16 autocast, float32 sampler state, the
               Langevin loop captured in a CUDA graph where a GPU is present

Measured: model forward at batch 100, annealed Langevin sampling of 100 images (1,000 steps; the
reference is timed over --ref-steps steps and scaled, and says so), a training step at batch 128
(forward, DSM loss, backward, Adam), each in float32 and bfloat16, with peak memory; and the
agreement of fast and reference samples from one seed over a short float32 run.

    python benchmarks/e2e.py --json e2e.json          # on the GPU
    python benchmarks/e2e.py --tiny                   # a seconds-long smoke run on the CPU
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import torch

import fastscore
from fastscore.models import CondRefineNetDilated
from fastscore.nn import CondInstanceNorm2d, CondInstanceNorm2dPlus, InstanceNorm2dPlus
from fastscore.sampling import AnnealedLangevin

NORMS = (CondInstanceNorm2dPlus, CondInstanceNorm2d, InstanceNorm2dPlus)


def set_norm_backend(model: torch.nn.Module, backend: str | None) -> None:
    for module in model.modules():
        if isinstance(module, NORMS):
            module.backend = backend


def geometric_sigmas(begin: float, end: float, n: int) -> torch.Tensor:
    return torch.logspace(torch.log10(torch.tensor(begin)), torch.log10(torch.tensor(end)), n)


def build_pair(args, device):
    """(reference, fast) models holding the same weights."""
    kwargs = dict(channels=3, image_size=32, ngf=args.ngf, num_classes=args.levels)
    torch.manual_seed(0)
    reference = CondRefineNetDilated(**kwargs).to(device)
    # Non-trivial norm parameters so the comparison exercises gamma, alpha and beta.
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, NORMS) and hasattr(m, "embed"):
                m.embed.weight.normal_(1.0, 0.1)
    set_norm_backend(reference, "torch")
    fast = CondRefineNetDilated(**kwargs, fuse_norm_act=True).to(device)
    fast.load_state_dict(reference.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    return reference, fast


def timer(device):
    def run(fn, warmup: int, iters: int) -> float:
        """Median seconds per call."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)
    return run


@contextlib.contextmanager
def peak_memory(device, record: dict, key: str):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize()
        record[key] = torch.cuda.max_memory_allocated() / 2**20


def autocast(device, dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    # No cast cache: CUDA graph capture (the fast sampler) cannot keep autocast's cached weights.
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def ncsn_dsm_loss(model, x, labels, sigmas, anneal_power=2.0):
    """ermongroup/ncsn's anneal_dsm_score_estimation, as its code computes it."""
    used = sigmas[labels].view(x.shape[0], *([1] * (x.dim() - 1)))
    perturbed = x + torch.randn_like(x) * used
    target = -1 / used**2 * (perturbed - x)
    scores = model(perturbed, labels)
    loss = 0.5 * ((scores - target) ** 2).reshape(x.shape[0], -1).sum(-1) * used.squeeze() ** anneal_power
    return loss.mean()


def fast_dsm_loss(model, x, labels, sigmas, seed, offset):
    used = sigmas[labels]
    perturbed = fastscore.perturb(x, used, seed, offset)
    return fastscore.dsm_loss(model(perturbed, labels).float(), used, seed, offset)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--tiny", action="store_true", help="small sizes for a quick CPU check of the script")
    p.add_argument("--ngf", type=int, default=128)
    p.add_argument("--levels", type=int, default=10)
    p.add_argument("--batch", type=int, default=100, help="forward and sampling batch")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--steps-each", type=int, default=100, help="Langevin steps per level (x levels = total)")
    p.add_argument("--ref-steps", type=int, default=50, help="reference sampling steps timed, then scaled")
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args(argv)
    if args.tiny:
        args.ngf, args.batch, args.train_batch, args.steps_each, args.ref_steps, args.iters = 8, 4, 4, 2, 4, 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    time_it = timer(device)
    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "args": vars(args), "backends": fastscore.backends()}
    try:
        import triton
        results["triton"] = triton.__version__
    except ImportError:
        results["triton"] = None

    reference, fast = build_pair(args, device)
    sigmas = geometric_sigmas(1.0, 0.01, args.levels).to(device)
    n_steps = args.levels * args.steps_each
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.rand(args.batch, 3, 32, 32, generator=g).to(device)
    labels = torch.randint(0, args.levels, (args.batch,), generator=g).to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    # Agreement first (float32, same seed): fast path vs reference path, short run.
    short = dict(n_steps_each=2, step_lr=2e-5)
    ref_sampler = AnnealedLangevin(reference, sigmas[:2], **short, backend="torch")
    fast_sampler = AnnealedLangevin(fast, sigmas[:2], **short)
    a = ref_sampler.sample(x.clone(), seed=7, progress=False)
    b = fast_sampler.sample(x_cl.clone(), seed=7, progress=False)
    results["agreement"] = {"max_abs_diff": (a - b).abs().max().item(),
                            "rel_l2": ((a - b).norm() / a.norm()).item(), "steps": 4}

    for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        row = results.setdefault(dtype_name, {})
        with torch.no_grad():
            for name, model, inp in (("reference", reference, x), ("fast", fast, x_cl)):
                with peak_memory(device, row, f"forward_{name}_peak_mib"):
                    with autocast(device, dtype):
                        row[f"forward_{name}_ms"] = 1e3 * time_it(lambda: model(inp, labels), 3, args.iters)

        ref_sampler = AnnealedLangevin(reference, sigmas, n_steps_each=args.steps_each, backend="torch")
        fast_sampler = AnnealedLangevin(fast, sigmas, n_steps_each=args.steps_each)
        steps_timed = min(args.ref_steps, n_steps)
        with peak_memory(device, row, "sampling_reference_peak_mib"), autocast(device, dtype):
            row_ref = time_it(lambda: _timed_steps(ref_sampler, x, labels, steps_timed), 0, 1)
        row["sampling_reference_s"] = row_ref * n_steps / steps_timed
        row["sampling_reference_extrapolated_from_steps"] = steps_timed
        with peak_memory(device, row, "sampling_fast_peak_mib"), autocast(device, dtype):
            row["sampling_fast_s"] = time_it(lambda: fast_sampler.sample(x_cl.clone(), seed=3, progress=False), 1, 1)

        for name, model in (("reference", reference), ("fast", fast)):
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            xb = torch.rand(args.train_batch, 3, 32, 32, generator=g).to(device)
            lb = torch.randint(0, args.levels, (args.train_batch,), generator=g).to(device)
            if name == "fast":
                xb = xb.contiguous(memory_format=torch.channels_last)
            offset = [0]

            def train_step(model=model, opt=opt, xb=xb, lb=lb, name=name):
                opt.zero_grad(set_to_none=True)
                with autocast(device, dtype):
                    if name == "reference":
                        loss = ncsn_dsm_loss(model, xb, lb, sigmas)
                    else:
                        loss = fast_dsm_loss(model, xb, lb, sigmas, 11, offset[0])
                        offset[0] += xb.numel()
                loss.backward()
                opt.step()

            with peak_memory(device, row, f"train_{name}_peak_mib"):
                row[f"train_{name}_ms"] = 1e3 * time_it(train_step, 2, max(2, args.iters // 2))
            model.eval()
        for key in ("forward", "train"):
            row[f"{key}_speedup"] = row[f"{key}_reference_ms"] / row[f"{key}_fast_ms"]
        row["sampling_speedup"] = row["sampling_reference_s"] / row["sampling_fast_s"]

    print(f"{results['device']}, torch {results['torch']}, triton {results['triton']}")
    print(f"agreement (float32, {results['agreement']['steps']} steps, same seed): "
          f"max |fast - reference| = {results['agreement']['max_abs_diff']:.3g}, "
          f"relative L2 = {results['agreement']['rel_l2']:.3g}")
    print(f"{'dtype':9} {'what':28} {'reference':>12} {'fast':>12} {'speedup':>8}")
    for dtype_name in ("float32", "bfloat16"):
        row = results[dtype_name]
        print(f"{dtype_name:9} {'forward, batch %d (ms)' % args.batch:28} {row['forward_reference_ms']:12.2f} "
              f"{row['forward_fast_ms']:12.2f} {row['forward_speedup']:8.2f}")
        print(f"{'':9} {'sampling, %d steps (s)' % n_steps:28} {row['sampling_reference_s']:12.2f} "
              f"{row['sampling_fast_s']:12.2f} {row['sampling_speedup']:8.2f}")
        print(f"{'':9} {'train step, batch %d (ms)' % args.train_batch:28} {row['train_reference_ms']:12.2f} "
              f"{row['train_fast_ms']:12.2f} {row['train_speedup']:8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


def _timed_steps(sampler: AnnealedLangevin, x: torch.Tensor, labels: torch.Tensor, steps: int) -> None:
    """`steps` reference Langevin updates at the first level's step size (the per-step cost is the same
    at every level)."""
    x = x.clone()
    offset = 0
    with torch.no_grad():
        for _ in range(steps):
            fastscore.langevin_step_(x, sampler.score(x, labels), sampler.step_sizes[0], 3, offset,
                                     backend=sampler.backend)
            offset += x.numel()


if __name__ == "__main__":
    sys.exit(main())
