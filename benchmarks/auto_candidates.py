"""Candidate estimator configs side by side with one of sbi's: C2ST and training CPU.

For each task, the same ``--budget`` simulations (``--seed``, default 0, which also seeds
training) train each candidate config
(``accuracy.fit_config``: ``build_estimator`` and the default training loop, one torch
thread) and ``--peer`` (default ``sbi``, sbi 0.27's default NPE; ``sbi_npse`` for
``npse`` candidates, ``none`` for no peer) beside them. Each draws 10,000 samples for
sbibm's 10 official observations, scored by ``--c2st``: ``early_stopping`` (default),
which ranks like sbibm's definition (``benchmarks/results/accuracy.md``, its 10^4
column) at a fraction of its time, to screen candidates, or ``sbibm``, the table's own
definition. With a peer, each candidate's row also gives Δ = candidate − peer ± its
standard error paired over the observations (same observations and C2ST seeds).
``--peer-from-table`` takes the peer's scores from the accuracy table's cell
(``benchmarks/results/accuracy.jsonl``, trained on the same simulations, seed 0) instead
of training it again; it needs ``--c2st sbibm``, the table's definition, and seed 0. The cells of
the accuracy table are then rerun with ``benchmarks/accuracy.py``.

Run: ``python benchmarks/auto_candidates.py --tasks bernoulli_glm gaussian_linear
--budget 1000 --configs '{"kind": "nsf", "members": 4}' '{"kind": "maf", "members": 4}'``
(about 5 minutes per candidate and task on this machine). Prints one markdown row per
(task, candidate).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from accuracy import (
    NUM_OBSERVATIONS,
    NUM_POSTERIOR_SAMPLES,
    SBI,
    fit,
    fit_config,
    load_cells,
    paired_delta,
)
from sbibm_files import official

from sbi_service.diagnostics.c2st import c2st_many
from sbi_service.simulators.simulate import simulate
from sbi_service.simulators.tasks import BUILTIN_TASKS


def print_row(
    task: str, budget: int, label: str, scores: np.ndarray, delta: str, extras: dict
) -> None:
    """One markdown row; ``extras`` holds ``train_cpu_seconds`` and ``epochs``."""
    print(
        f"| {task} | {budget:,} | {label} | {scores.mean():.3f} ± {scores.std():.3f} | {delta} | "
        f"{extras['train_cpu_seconds']:.0f} | {extras['epochs']} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", required=True, choices=BUILTIN_TASKS)
    parser.add_argument("--budget", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", nargs="+", type=json.loads, required=True)
    parser.add_argument("--peer", default="sbi", choices=[*SBI, "none"])
    parser.add_argument("--peer-from-table", action="store_true")
    parser.add_argument("--c2st", default="early_stopping", choices=["early_stopping", "sbibm"])
    args = parser.parse_args()
    if args.peer_from_table and (args.peer == "none" or args.c2st != "sbibm" or args.seed):
        parser.error(
            "--peer-from-table needs a --peer, --c2st sbibm and --seed 0 (the table's cells)"
        )
    table = load_cells(Path(__file__).parent / "results") if args.peer_from_table else {}
    torch.set_num_threads(1)
    ks = list(range(1, NUM_OBSERVATIONS + 1))
    header = f"C2ST ({args.c2st}, seed {args.seed}) | Δ vs {args.peer}"
    print(f"| task | N | candidate | {header} | training CPU s | epochs |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name in args.tasks:
        task = BUILTIN_TASKS[name]()
        observations = [official(name, k) for k in ks]
        theta, x = simulate(task, args.budget, args.seed)
        peer = None  # the peer's row, {"c2st": scores}, once it is scored
        if args.peer_from_table:
            peer = table.get((name, args.budget, args.peer))
            if peer is None:
                raise SystemExit(
                    f"the accuracy table has no {args.peer} cell for {name} at {args.budget:,}"
                    " simulations: run benchmarks/accuracy.py for it, or drop --peer-from-table"
                )
            label = f"`{args.peer}` (the table's cell)"
            print_row(name, args.budget, label, np.array(peer["c2st"]), "", peer)
        peers = [] if args.peer == "none" or args.peer_from_table else [args.peer]
        for candidate in [*peers, *args.configs]:
            is_peer = candidate == args.peer
            if is_peer:
                fitted = fit(args.peer, task, theta, x, args.seed)
            else:
                fitted = fit_config(candidate, task, theta, x, args.seed)
            pairs = [
                (ref, fitted.sample(torch.from_numpy(x_o), NUM_POSTERIOR_SAMPLES))
                for x_o, _, ref in observations
            ]
            scores = np.array(c2st_many(pairs, ks, method=args.c2st))
            row = {"c2st": scores}
            delta = paired_delta(row, peer) if peer is not None else ""  # peer comes first
            if is_peer:
                peer = row
            label = f"`{candidate if is_peer else json.dumps(candidate)}`"
            print_row(name, args.budget, label, scores, delta, fitted.extras)


if __name__ == "__main__":
    main()
