"""The core issue's accuracy check, through the CLI exactly as a user runs it.

    sbi-service train --simulator gaussian_linear --num-simulations 10000 --estimator nsf ...
    sbi-service sample MODEL --observations OBS.npy --num-samples 10000 ...

then the C2ST (sbibm definition, ``sbi_service.diagnostics.c2st``) of each observation's
samples against 10,000 samples of the analytic Gaussian posterior, for 10 benchmark
observations. Prints a line per observation, the mean, and whether it is below 0.6.

    python benchmarks/gaussian_linear_c2st.py [--num-simulations 10000] [--estimator nsf]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sbi_service.diagnostics.c2st import c2st
from sbi_service.simulators.observations import benchmark_observations
from sbi_service.simulators.registry import get_task


def cli(home: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "sbi_service", *args],
        capture_output=True,
        text=True,
        env={"SBI_SERVICE_HOME": str(home), "PATH": ""},
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"sbi-service {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--num-simulations", type=int, default=10_000)
    ap.add_argument("--estimator", default="nsf")
    ap.add_argument("--observations", type=int, default=10)
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--c2st-method", default="early_stopping", choices=["sbibm", "early_stopping"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--learning-rate", help="passed to train (default: the training loop's)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    task = get_task("gaussian_linear")
    _, x_o = benchmark_observations(task, args.observations)
    with tempfile.TemporaryDirectory() as tmp:
        home, obs, out = Path(tmp) / "home", Path(tmp) / "obs.npy", Path(tmp) / "samples.npy"
        start = time.perf_counter()
        summary = json.loads(
            cli(
                home,
                "train",
                "--simulator",
                "gaussian_linear",
                "--num-simulations",
                str(args.num_simulations),
                "--estimator",
                args.estimator,
                "--seed",
                str(args.seed),
                "--name",
                "gl",
                "--json",
                *(["--learning-rate", args.learning_rate] if args.learning_rate else []),
            )
        )
        train_wall = time.perf_counter() - start
        np.save(obs, x_o.numpy())
        cli(
            home,
            "sample",
            "gl",
            "--observations",
            str(obs),
            "--num-samples",
            str(args.num_samples),
            "--seed",
            str(args.seed + 1),
            "--out",
            str(out),
        )
        samples = np.load(out)

    print(
        f"gaussian_linear, {args.estimator}, {args.num_simulations} simulations: "
        f"train {summary['train_seconds']:.1f}s ({summary['epochs']} epochs; "
        f"{train_wall:.1f}s with "
        f"simulation and start-up), C2ST method {args.c2st_method}"
    )
    scores = []
    for i in range(args.observations):
        ref = task.reference_posterior(
            x_o[i], args.num_samples, torch.Generator().manual_seed(100 + i)
        )
        scores.append(c2st(ref.numpy(), samples[i], seed=i, method=args.c2st_method))
        print(f"  observation {i + 1:>2}: C2ST {scores[-1]:.3f}")
    mean = float(np.mean(scores))
    verdict = "below" if mean < 0.6 else "NOT below"
    print(f"mean C2ST over {args.observations} observations: {mean:.3f} ({verdict} the 0.6 target)")
    print(
        json.dumps(
            {
                "estimator": args.estimator,
                "num_simulations": args.num_simulations,
                "c2st": scores,
                "mean_c2st": mean,
                "train_seconds": summary["train_seconds"],
            }
        )
    )


if __name__ == "__main__":
    main()
