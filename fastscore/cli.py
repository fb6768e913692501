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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastscore",
        description="Train and sample NCSN score models with fused kernels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("info", help="versions, devices and which backends work where")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("demo", help="train and sample a small NCSN on the bundled MNIST subset")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
