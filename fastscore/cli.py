"""The `fastscore` command line: one subcommand per job, each with --help."""
from __future__ import annotations

import argparse
import sys

import torch

import fastscore


def cmd_info(args: argparse.Namespace) -> int:
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
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    print("fastscore demo: the NCSN models, trainer and sampler are not built yet, so there is nothing "
          "to train or sample. The fused ops and their reference are in place; run `fastscore info`.")
    return 0


def cmd_toy(args: argparse.Namespace) -> int:
    from fastscore import toy  # deferred: only this subcommand needs it

    result = toy.run(n_samples=args.n_samples, seed=args.seed, progress=not args.quiet)
    print(toy.report(result))
    print(f"wrote {toy.draw(result, args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastscore",
        description="Train and sample NCSN score models with fused kernels.",
    )
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
    p.add_argument("--n-samples", type=int, default=1000, help="samples per method (default: 1000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_toy)
    p = sub.add_parser("demo", help="train and sample a small NCSN on the bundled MNIST subset")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
