"""One process of the distributed test run, started by helpers.run_ranks with torchrun's variables set:
`python tests/ddp_worker.py OUT` writes OUT/rank<r>.pt (see main)."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fastscore.ncsn import distributed  # noqa: E402

from helpers import TinyScore, tiny_training  # noqa: E402

SAMPLE_SIGMAS = (1.0, 0.5, 0.1)


def train(group, workdir, n_iters, resume=False):
    trainer = tiny_training(workdir, group=group, n_iters=n_iters)
    if resume:
        trainer.resume(workdir)
    trainer.train()
    return {"model": trainer.model.state_dict(), "ema": trainer.ema.shadow,
            "optimizer": trainer.optimizer.state_dict()["state"], "offset": trainer.noise_offset}


def sample(group, n):
    from fastscore.ncsn.generate import generate
    from fastscore.sampling import AnnealedLangevin

    torch.manual_seed(0)
    model = TinyScore(len(SAMPLE_SIGMAS), channels=2).eval()
    sampler = AnnealedLangevin(model, SAMPLE_SIGMAS, n_steps_each=3, step_lr=0.01, shape=(2, 4, 4))
    return generate(sampler, n, seed=21, group=group, batch=2, progress=False)


def main(out):
    """One launch does every case (starting processes is most of the time): 6 steps straight; 3 steps,
    then a fresh trainer resuming from the checkpoint for 3 more; 7 samples in batches of 2."""
    group, _ = distributed.init("cpu")
    result = {"straight": train(group, os.path.join(out, "straight"), 6)}
    train(group, os.path.join(out, "resumed"), 3)
    torch.manual_seed(999)  # a restart does not share the global RNG state
    result["resumed"] = train(group, os.path.join(out, "resumed"), 6, resume=True)
    samples = sample(group, 7)
    assert (samples is None) == (not group.is_main)
    result["samples"] = samples
    torch.save(result, os.path.join(out, f"rank{group.rank}.pt"))
    distributed.finish(group)


if __name__ == "__main__":
    main(sys.argv[1])
