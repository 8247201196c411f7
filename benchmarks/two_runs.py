"""Two training runs at once on one machine: how much slower than one alone.

PyTorch gives every process as many intra-op threads as the machine has cores; two
processes training at once then run twice as many busy threads as there are cores, and
their OpenMP threads wait on each other (issue 22 measured 5x). aepipe's training loops
share the usable CPUs through ``ae_models.training.cpus.CpuShare``. Contenders, each in fresh
processes, on the same MNIST rows (the first 20,000, pixels in [0, 1]):
- aepipe: ``AutoencoderReducer(code_size=16, epochs=3).fit(x)``;
- a plain PyTorch loop: the same sizes (784-128-64-16, mirrored, Adam, batch 256, 3
  epochs), torch's default threads; what a user gets without aepipe.
For each: one run alone (best of ``--runs``), then ``--runs`` rounds of two runs started
together (a round lasts until both end; the best round counts). Target: two at once take
at most 2.2x one alone (sharing 2 cores fairly costs 2x).

    .venv/bin/python benchmarks/two_runs.py        # about 3 minutes here
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, machine, require_dataset, target

ROWS, EPOCHS = 20_000, 3


def work(kind: str) -> dict[str, float]:
    """One fit in this process: its seconds (data loaded first, not timed)."""
    import numpy as np
    import torch

    from tasks.io.arrays import load_mnist

    x, _ = load_mnist(require_dataset("mnist"), "train")
    x = x[:ROWS].astype(np.float32)
    x = x / 255.0 if x.max() > 1 else x
    threads = torch.get_num_threads()
    start = time.perf_counter()
    if kind == "aepipe":
        from ae_models import AutoencoderReducer

        AutoencoderReducer(code_size=16, epochs=EPOCHS, random_state=0).fit(x)
    else:
        torch.manual_seed(0)
        sizes = [784, 128, 64, 16]
        layers: list[torch.nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        for a, b in itertools.pairwise(sizes[::-1]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        net = torch.nn.Sequential(*layers[:-1], torch.nn.Sigmoid())
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        data = torch.from_numpy(x)
        for _ in range(EPOCHS):
            for idx in torch.randperm(len(data)).split(256):
                xb = data[idx]
                loss = torch.nn.functional.mse_loss(net(xb), xb)
                opt.zero_grad()
                loss.backward()
                opt.step()
    return {"seconds": time.perf_counter() - start, "threads": threads}


def start(kind: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", kind],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> dict[str, float]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(err[-3000:])
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", choices=["aepipe", "plain"])
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(work(args.worker)))
        return
    require_dataset("mnist")
    print(machine())
    ratios = {}
    for kind in ("aepipe", "plain"):
        alone = min(finish(start(kind))["seconds"] for _ in range(args.runs))
        rounds = []
        for _ in range(args.runs):
            pair = [start(kind), start(kind)]
            rounds.append(max(finish(p)["seconds"] for p in pair))
        ratios[kind] = min(rounds) / alone
        print(
            f"{kind:7s} alone {alone:6.2f} s   two at once {min(rounds):6.2f} s each "
            f"(rounds {', '.join(f'{r:.1f}' for r in rounds)})   ratio {ratios[kind]:.2f}x"
        )
    print(target("two_fits_at_once_vs_alone", ratios["aepipe"], 2.2, higher_is_better=False))


if __name__ == "__main__":
    main()
