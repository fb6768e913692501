"""End to end: fastscore's fast path against ncsn's eager code on the CIFAR-10 network, one process.

    baseline  ncsn's CondRefineNetDilated (ngf 128, 32 px, 10 levels) as ncsn's code runs it: its
              CondInstanceNorm++ modules, float32, contiguous, eager; its loss and its Langevin loop
              with torch.randn_like noise (benchmarks/ncsn_baseline.py)
    fast      the same weights with norm + ELU fused (fuse_norm_act), the default fused backend,
              channels_last end to end, float32 or bfloat16 autocast (sampler state float32), the
              Langevin update replayed from a CUDA graph where a GPU is present
    oracle    the same network on fastscore's torch backend: only to check that the fast path samples
              what the reference computes (never a speed baseline)

Figures, each printed as soon as it is measured: forward at --batch (eager and graph-replayed),
annealed Langevin sampling timed over --sample-steps steps and scaled to 1,000 (labelled), a training
step at --train-batch (forward, DSM loss, backward, Adam), float32 and bfloat16, peak memory; then a
torch.profiler table of the top kernels of one bfloat16 forward of the fast path. PyTorch's default
precision settings (cuDNN may use TF32 for float32 convolutions, for both paths alike).

    python benchmarks/e2e.py --json e2e.json          # on the GPU
    python benchmarks/e2e.py --tiny                   # seconds on the CPU: proves the script
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ncsn_baseline  # noqa: E402

import fastscore  # noqa: E402
from fastscore.ncsn.models import CondRefineNetDilated  # noqa: E402
from fastscore.nn import CondInstanceNorm2dPlus  # noqa: E402
from fastscore.sampling import AnnealedLangevin  # noqa: E402
from fastscore.schedule import noise_levels  # noqa: E402

FULL_STEPS = 1000  # ncsn's CIFAR-10 sampling: 10 levels x 100 steps


class Figures:
    """Every figure, printed when measured and kept for the JSON."""

    def __init__(self, path: str | None):
        self.data: dict = {}
        self.path = path

    def add(self, key: str, value, label: str) -> None:
        self.data[key] = value
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {label:58} {shown}", flush=True)
        self.save()

    def save(self) -> None:
        if self.path:
            Path(self.path).write_text(json.dumps(self.data, indent=1, default=str))


def build_models(args, device):
    """(fast, baseline, oracle) holding the same weights."""
    kwargs = dict(channels=3, image_size=32, ngf=args.ngf, num_classes=args.levels)
    torch.manual_seed(0)
    plain = CondRefineNetDilated(**kwargs).to(device)
    with torch.no_grad():  # non-trivial norm parameters: gamma, alpha and beta all matter
        for m in plain.modules():
            if isinstance(m, CondInstanceNorm2dPlus):
                m.embed.weight.normal_(1.0, 0.1)
    baseline = ncsn_baseline.baseline_network(plain)
    oracle = plain
    for m in oracle.modules():
        if isinstance(m, CondInstanceNorm2dPlus):
            m.backend = "torch"
    fast = CondRefineNetDilated(**kwargs, fuse_norm_act=True).to(device)
    fast.load_state_dict(plain.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    return fast.eval(), baseline.eval(), oracle.eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(fn, device, warmup: int, iters: int) -> float:
    """Median seconds of one call (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
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


def graphed(fn, device):
    """fn captured in a CUDA graph: returns replay (None on the CPU)."""
    if device.type != "cuda":
        return None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def autocast(device, dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    # No cast cache: a CUDA graph capture cannot keep autocast's cached weights.
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


@contextlib.contextmanager
def peak_mib(device, figures: Figures, key: str):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize()
        figures.add(key, torch.cuda.max_memory_allocated() / 2**20, f"{key} (MiB)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write every figure here (rewritten after each one)")
    p.add_argument("--tiny", action="store_true", help="small sizes for a quick CPU check of the script")
    p.add_argument("--ngf", type=int, default=128)
    p.add_argument("--levels", type=int, default=10)
    p.add_argument("--batch", type=int, default=100, help="forward and sampling batch")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--sample-steps", type=int, default=200, help="Langevin steps timed, then scaled to 1,000")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--skip", default="", help="comma-separated parts to leave out: forward,sampling,train,profile")
    args = p.parse_args(argv)
    if args.tiny:
        args.ngf, args.batch, args.train_batch, args.sample_steps, args.iters = 8, 4, 4, 4, 2
        args.levels = 2
    skip = set(filter(None, args.skip.split(",")))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fig = Figures(args.json)
    fig.data.update(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    torch=torch.__version__, args=vars(args), backends=fastscore.backends())
    print(f"{fig.data['device']}, torch {torch.__version__}; fast path: "
          f"{fastscore.backend.dispatch.resolve_name(None, device)} backend; baseline: ncsn eager fp32", flush=True)

    fast, baseline, oracle = build_models(args, device)
    sigmas = noise_levels(1.0, 0.01, args.levels).tolist()   # ncsn's CIFAR-10 ladder
    sigmas_t = torch.tensor(sigmas, device=device)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, 32, 32, generator=g).to(device)
    labels = torch.randint(0, args.levels, (args.batch,), generator=g).to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    print("agreement", flush=True)
    with torch.no_grad():
        a, b = baseline(x, labels), oracle(x, labels)
    fig.add("baseline_vs_oracle_forward_rel_l2", ((a - b).norm() / b.norm()).item(),
            "baseline vs oracle forward, float32, relative L2")
    short = dict(n_steps_each=2, step_lr=2e-5)
    a = AnnealedLangevin(oracle, sigmas[:2], **short, backend="torch").sample(x.clone(), seed=7, progress=False)
    b = AnnealedLangevin(fast, sigmas[:2], **short).sample(x_cl.clone(), seed=7, progress=False)
    fig.add("fast_vs_oracle_sampling_rel_l2", ((a - b).norm() / a.norm()).item(),
            "fast vs oracle, 4 Langevin steps float32 same seed, relative L2")

    n_each = max(1, args.sample_steps // args.levels)
    timed_steps = n_each * args.levels
    scale = FULL_STEPS / timed_steps
    with torch.no_grad():
        if "forward" not in skip:
            print(f"forward, batch {args.batch} (ms per forward)", flush=True)
            runs = [("baseline", "float32", baseline, x), ("baseline", "bfloat16", baseline, x),
                    ("fast", "float32", fast, x_cl), ("fast", "bfloat16", fast, x_cl)]
            for name, dtype_name, model, inp in runs:
                dtype = getattr(torch, dtype_name)

                def forward(model=model, inp=inp, dtype=dtype):
                    with autocast(device, dtype):
                        return model(inp, labels)
                with peak_mib(device, fig, f"forward_{name}_{dtype_name}_peak"):
                    ms = 1e3 * seconds_per_call(forward, device, 3, args.iters)
                fig.add(f"forward_{name}_{dtype_name}_ms", ms, f"{name} {dtype_name} eager")
                replay = graphed(forward, device)
                if replay is not None:
                    ms = 1e3 * seconds_per_call(replay, device, 2, args.iters)
                    fig.add(f"forward_{name}_{dtype_name}_graph_ms", ms, f"{name} {dtype_name} graph-replayed")

        if "sampling" not in skip:
            print(f"annealed Langevin, {args.batch} images: {timed_steps} steps timed, scaled to "
                  f"{FULL_STEPS} (s per {FULL_STEPS} steps)", flush=True)
            with peak_mib(device, fig, "sampling_baseline_float32_peak"):
                t = seconds_per_call(lambda: ncsn_baseline.anneal_langevin_dynamics(
                    x.clone(), baseline, sigmas_t, n_each), device, 0, 1)
            fig.add("sampling_baseline_float32_s", t * scale, f"baseline float32 ({timed_steps} steps x {scale:g})")
            for dtype_name in ("float32", "bfloat16"):
                sampler = AnnealedLangevin(fast, sigmas, n_steps_each=n_each)
                with (peak_mib(device, fig, f"sampling_fast_{dtype_name}_peak"),
                      autocast(device, getattr(torch, dtype_name))):
                    t = seconds_per_call(lambda sampler=sampler: sampler.sample(x_cl.clone(), seed=3, progress=False),
                                         device, 1, 1)
                fig.add(f"sampling_fast_{dtype_name}_s", t * scale,
                        f"fast {dtype_name} ({timed_steps} steps x {scale:g})")

    if "train" not in skip:
        print(f"training step, batch {args.train_batch} (ms)", flush=True)
        xb = torch.rand(args.train_batch, 3, 32, 32, generator=g).to(device)
        lb = torch.randint(0, args.levels, (args.train_batch,), generator=g).to(device)
        for name, dtype_name in (("baseline", "float32"), ("fast", "float32"), ("fast", "bfloat16")):
            model = baseline if name == "baseline" else fast
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-5)
            inp = xb if name == "baseline" else xb.contiguous(memory_format=torch.channels_last)
            offset = [0]
            dtype = getattr(torch, dtype_name)

            def step(model=model, opt=opt, inp=inp, name=name, dtype=dtype, offset=offset):
                opt.zero_grad(set_to_none=True)
                with autocast(device, dtype):
                    if name == "baseline":
                        loss = ncsn_baseline.anneal_dsm_loss(model, inp, lb, sigmas_t)
                    else:
                        used = sigmas_t[lb]
                        perturbed = fastscore.perturb(inp, used, 11, offset[0])
                        loss = fastscore.dsm_loss(model(perturbed, lb).float(), used, 11, offset[0])
                        offset[0] += inp.numel()
                loss.backward()
                opt.step()

            with peak_mib(device, fig, f"train_{name}_{dtype_name}_peak"):
                ms = 1e3 * seconds_per_call(step, device, 2, max(2, args.iters // 2))
                fig.add(f"train_{name}_{dtype_name}_ms", ms, f"{name} {dtype_name}")
            model.eval()

    # Every speed-up is against the baseline's float32 eager figure of the same kind.
    for what, base_key, fast_key in (("forward", "forward_baseline_float32_ms", "forward_fast_{}_ms"),
                                     ("forward_graph", "forward_baseline_float32_ms", "forward_fast_{}_graph_ms"),
                                     ("sampling", "sampling_baseline_float32_s", "sampling_fast_{}_s"),
                                     ("train", "train_baseline_float32_ms", "train_fast_{}_ms")):
        base = fig.data.get(base_key)
        for dtype_name in ("float32", "bfloat16"):
            fast_value = fig.data.get(fast_key.format(dtype_name))
            if base and fast_value:
                fig.add(f"speedup_{what}_{dtype_name}", base / fast_value,
                        f"speed-up, {what.replace('_', ' ')} fast {dtype_name} vs baseline float32 eager (x)")

    if "profile" not in skip:
        profile(fast, x_cl, labels, device, fig)
    fig.save()
    return 0


def profile(model, x, labels, device, fig: Figures, rows: int = 20) -> None:
    """torch.profiler's top kernels of one bfloat16 forward of the fast path."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), autocast(device, torch.bfloat16):
        model(x, labels)
        sync(device)
        with torch_profile(activities=activities) as prof:
            model(x, labels)
            sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60)
    print(f"top {rows} of one bfloat16 forward of the fast path, by {sort}", flush=True)
    print(table, flush=True)
    fig.data["profile_bf16_forward"] = table


if __name__ == "__main__":
    sys.exit(main())
