"""The ``sbi-service`` command line: thin commands over ``sbi_service.workflows``.

Exit codes: 0 success; 1 a diagnostic check failed (``diagnose``); 2 bad input or
usage (one line on stderr, no traceback); 3 ``diagnose`` could not run its checks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sbi_service.config import get_settings
from sbi_service.errors import UserError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Amortized posterior service for simulation-based inference.",
)
simulators_app = typer.Typer(no_args_is_help=True, help="List and register simulators.")
models_app = typer.Typer(no_args_is_help=True, help="List and verify stored models.")
datasets_app = typer.Typer(no_args_is_help=True, help="Store simulation sets to train from.")
app.add_typer(simulators_app, name="simulators")
app.add_typer(models_app, name="models")
app.add_typer(datasets_app, name="datasets")
err = Console(stderr=True)
out = Console()


def _store():
    from sbi_service.store import Store

    return Store(get_settings().home)


def _setup_torch() -> None:
    import torch

    threads = get_settings().torch_threads
    if threads > 0:
        torch.set_num_threads(threads)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")


# -- simulators ---------------------------------------------------------------------
@simulators_app.command("list")
def simulators_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the simulators: built-in tasks, plugins and registered ones."""
    from sbi_service.simulators.registry import list_tasks

    tasks = list_tasks(_store().list_simulators())
    if as_json:
        _print_json(tasks)
        return
    for t in tasks:
        if "error" in t:
            typer.echo(f"{t['name']:<24} cannot load: {t['error']}")
        else:
            shape = "x".join(map(str, t["x_shape"]))
            typer.echo(
                f"{t['name']:<24} theta {t['dim_theta']:>3}  x {shape:>5}  {t['description']}"
            )


@simulators_app.command("register")
def simulators_register(
    name: str,
    import_path: Annotated[
        str | None, typer.Option(help="package.module:attribute (a Python simulator)")
    ] = None,
    url: Annotated[str | None, typer.Option(help="http(s) URL of a remote simulator")] = None,
    prior: Annotated[Path | None, typer.Option(help="PRIOR.json (a callable or --url)")] = None,
    x_shape: Annotated[str | None, typer.Option(help="shape of one x, e.g. '10' or '3,32'")] = None,
    format: Annotated[str, typer.Option(help="remote wire format: json or npy")] = "json",
    timeout: Annotated[float, typer.Option(help="seconds per remote request")] = 30.0,
) -> None:
    """Register a simulator by import path or by URL; a trial batch checks it first."""
    from sbi_service.workflows.simulators import register_simulator

    if (import_path is None) == (url is None):
        raise UserError("give exactly one of --import-path or --url")
    spec: dict[str, Any] = {"import_path": import_path} if url is None else {"url": url}
    if url is not None:
        if prior is None or x_shape is None:
            raise UserError("--url needs --prior PRIOR.json and --x-shape")
        spec.update(format=format, timeout_s=timeout)
    if prior is not None:
        from sbi_service.simulators.priors import load_prior

        spec["prior"] = load_prior(prior).spec
    if x_shape is not None:
        try:
            spec["x_shape"] = [int(s) for s in x_shape.split(",")]
        except ValueError:
            raise UserError(f"--x-shape {x_shape!r} must be integers separated by commas") from None
    kind = "import_path" if url is None else "remote"
    hosts = get_settings().simulator_hosts
    _print_json(register_simulator(_store(), name, kind, spec, allowed_hosts=hosts))


# -- datasets -------------------------------------------------------------------------
@datasets_app.command("add")
def datasets_add(file: Path) -> None:
    """Store FILE.npz (theta, x) as a dataset; prints its id, size and sha256 as JSON."""
    from sbi_service.workflows.datasets import add_dataset

    try:
        data = file.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {file}: {e.strerror}") from None
    _print_json(add_dataset(_store(), data))


@datasets_app.command("show")
def datasets_show(dataset_id: str) -> None:
    """Print a stored dataset's record as JSON."""
    from sbi_service.workflows.datasets import get_dataset

    _print_json(get_dataset(_store(), dataset_id))


# -- simulate -------------------------------------------------------------------------
Backend = Annotated[
    str | None,
    typer.Option(help="local or ray (default: SBI_SERVICE_SIMULATION_BACKEND, else local)"),
]


@app.command()
def simulate(
    simulator: str,
    num_simulations: Annotated[int, typer.Option("--num-simulations")],
    seed: Annotated[int, typer.Option()],
    out_file: Annotated[Path, typer.Option("--out", help="FILE.npz")],
    workers: Annotated[int, typer.Option(help="processes (local) or local Ray CPUs")] = 1,
    backend: Backend = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="keep the chunks an interrupted run finished")
    ] = False,
    chunk_size: Annotated[
        int | None,
        typer.Option(
            "--chunk-size", min=1, help="rows per chunk, default 10,000 (seeds depend on it)"
        ),
    ] = None,
) -> None:
    """Simulate (theta, x) pairs from the prior and write them to an .npz file."""
    from sbi_service.simulators.registry import get_task
    from sbi_service.simulators.simulate import (
        CHUNK_SIZE,
        checkpoint_folder,
        remove_checkpoint,
        save_simulations,
    )
    from sbi_service.simulators.simulate import simulate as run

    _setup_torch()
    store = _store()
    stored = store.list_simulators()
    task = get_task(simulator, stored)
    chunk_size = chunk_size or CHUNK_SIZE
    folder = checkpoint_folder(store.home, task, num_simulations, seed, chunk_size)
    if not resume:
        remove_checkpoint(folder)
    with Progress(
        TextColumn("simulating"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal,
    ) as bar:
        bar_id = bar.add_task("simulate", total=num_simulations)
        sims = run(
            task,
            num_simulations,
            seed,
            workers=workers,
            chunk_size=chunk_size,
            backend=backend or get_settings().simulation_backend,
            checkpoint=folder,
            progress=lambda done, _: bar.update(bar_id, completed=done),
            stored=stored,
        )
    save_simulations(out_file, sims.theta, sims.x)
    remove_checkpoint(folder)
    r = sims.report
    err.print(
        f"wrote {r.num_kept} simulations of {simulator} to {out_file} ({r.backend}, "
        f"{r.resumed_chunks} chunk(s) resumed)",
        markup=False,
        soft_wrap=True,
    )
    if r.num_nonfinite or r.failed_chunks:
        err.print(
            f"dropped {r.num_nonfinite} rows with NaN or inf; failed chunks: "
            + (json.dumps(r.failed_chunks) if r.failed_chunks else "none"),
            markup=False,
            soft_wrap=True,
        )


# -- train ----------------------------------------------------------------------------
@app.command()
def train(
    name: Annotated[str, typer.Option("--name", help="model name")],
    estimator: Annotated[
        str, typer.Option(help="auto (chosen from the data), nsf, maf, npse, fmpe")
    ] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
    simulator: Annotated[str | None, typer.Option()] = None,
    num_simulations: Annotated[int | None, typer.Option("--num-simulations")] = None,
    data: Annotated[Path | None, typer.Option(help="FILE.npz with theta and x")] = None,
    dataset: Annotated[str | None, typer.Option(help="id of a stored dataset")] = None,
    prior: Annotated[Path | None, typer.Option(help="PRIOR.json, with --data or --dataset")] = None,
    backend: Backend = None,
    workers: Annotated[int, typer.Option(help="simulation processes or local Ray CPUs")] = 1,
    embedding: Annotated[str | None, typer.Option(help='JSON, e.g. {"kind": "mlp"}')] = None,
    options: Annotated[str | None, typer.Option(help="JSON estimator settings")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="default: the training loop's")] = None,
    batch_size: Annotated[int | None, typer.Option(help="default: from the data size")] = None,
    learning_rate: Annotated[float | None, typer.Option()] = None,
    patience: Annotated[int | None, typer.Option(help="epochs without improvement")] = None,
    fisher_reg: Annotated[
        float, typer.Option("--fisher-reg", help="BETA of the Fisher regularizer (flows)")
    ] = 0.0,
    fisher_mode: Annotated[
        str, typer.Option("--fisher-mode", help="ema (cheap, every few steps) or full")
    ] = "ema",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Train a posterior estimator on simulations and store it as a new model version."""
    from sbi_service.estimators.train import TrainConfig
    from sbi_service.simulators.priors import load_prior
    from sbi_service.workflows.train import TrainRequest, train_model

    _setup_torch()
    req = TrainRequest(
        name=name,
        estimator=estimator,
        seed=seed,
        simulator=simulator,
        num_simulations=num_simulations,
        data=data,
        dataset=dataset,
        prior=load_prior(prior).spec if prior is not None else None,
        backend=backend or get_settings().simulation_backend,
        workers=workers,
        embedding=_json_option(embedding, "--embedding"),
        estimator_options=_json_option(options, "--options") or {},
        train=TrainConfig(
            **_given(
                batch_size=batch_size,
                learning_rate=learning_rate,
                max_epochs=max_epochs,
                patience=patience,
            )
        ),
        fisher_reg=fisher_reg,
        fisher_mode=fisher_mode,
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal,
    ) as bar:
        sim_id = None
        if req.simulator is not None:
            sim_id = bar.add_task("simulating", total=req.num_simulations or 1, info="")
        task_id = bar.add_task("training", total=1.0, info="")

        def simulated(done: int, total: int) -> None:
            bar.update(sim_id, completed=done, info=f"{done}/{total}")

        def progress(epoch: int, train_loss: float, val_loss: float, done: float) -> None:
            info = f"epoch {epoch}  train {train_loss:.3f}  val {val_loss:.3f}"
            bar.update(task_id, completed=done, info=info)

        summary = train_model(_store(), req, progress, simulated)
    if as_json:
        _print_json(summary)
    else:
        out.print(
            f"trained {summary['model']} v{summary['version']} ({estimator}) in "
            f"{summary['train_seconds']:.1f}s, {summary['epochs']} epochs, "
            f"best validation loss {summary['best_validation_loss']:.4f}"
        )


def _given(**options: Any) -> dict[str, Any]:
    """The options the user set (``None`` means: keep the library's default)."""
    return {k: v for k, v in options.items() if v is not None}


def _json_option(value: str | None, flag: str) -> dict | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise UserError(f"{flag} is not valid JSON: {e.msg}") from None
    if not isinstance(parsed, dict):
        raise UserError(f"{flag} must be a JSON object")
    return parsed


# -- sample ---------------------------------------------------------------------------
@app.command()
def sample(
    model: str,
    observations: Annotated[Path, typer.Option(help="OBS.npy, (num_obs, dim_x)")],
    num_samples: Annotated[int, typer.Option("--num-samples")],
    seed: Annotated[int, typer.Option()],
    out_file: Annotated[Path, typer.Option("--out", help="OUT.npy, (num_obs, N, dim_theta)")],
    version: Annotated[int | None, typer.Option(help="model version (default: latest)")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a pair plot PNG of the samples")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a summary as JSON")] = False,
) -> None:
    """Draw posterior samples for each observation and write them to an .npy file."""
    from sbi_service.workflows.models import (
        load_observations,
        load_posterior,
        sample_posterior,
        summarize,
    )

    _setup_torch()
    posterior, record = load_posterior(_store(), model, version)
    samples = sample_posterior(posterior, load_observations(observations), num_samples, seed)
    _save_npy(out_file, samples)
    summary = summarize(samples)
    if plot is not None:
        from sbi_service.diagnostics.plots import pair_plot

        shown = samples[:4]
        pair_plot(shown, plot, title=f"{model} v{record['version']}",
                  set_labels=[f"observation {i}" for i in range(len(shown))])  # fmt: skip
    if as_json:
        _print_json({"model": model, "version": record["version"], "out": str(out_file), **summary})
        return
    out.print(
        f"{model} v{record['version']}: {samples.shape[1]} samples for {len(samples)} "
        f"observations -> {out_file}"
    )
    for i, (m, s) in enumerate(zip(summary["mean"], summary["std"], strict=True)):
        cells = "  ".join(f"{a:+.3f}±{b:.3f}" for a, b in zip(m, s, strict=True))
        out.print(f"  obs {i}: {cells}")
    if plot is not None:
        out.print(f"pair plot: {plot}")


def _save_npy(path: Path, array: np.ndarray) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    with os.fdopen(fd, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


# -- diagnose -------------------------------------------------------------------------
GATE_FAILED, GATE_BROKEN = 1, 3


@app.command()
def diagnose(
    model: str,
    seed: Annotated[int, typer.Option()],
    report: Annotated[Path, typer.Option(help="folder for report.json, report.html, PNGs")],
    tarp: Annotated[bool, typer.Option("--tarp", help="TARP coverage")] = False,
    sbc: Annotated[bool, typer.Option("--sbc", help="simulation-based calibration")] = False,
    coverage: Annotated[bool, typer.Option("--coverage", help="HPD expected coverage")] = False,
    robustness: Annotated[bool, typer.Option("--robustness", help="adversarial PGD")] = False,
    c2st: Annotated[bool, typer.Option("--c2st", help="vs the reference posterior")] = False,
    ppc: Annotated[bool, typer.Option("--ppc", help="posterior predictive check")] = False,
    num_simulations: Annotated[int | None, typer.Option("--num-simulations")] = None,
    data: Annotated[Path | None, typer.Option(help="TEST.npz with theta and x")] = None,
    version: Annotated[int | None, typer.Option(help="model version (default: latest)")] = None,
    num_posterior_samples: Annotated[int, typer.Option("--num-posterior-samples")] = 1000,
    max_atc: Annotated[float, typer.Option("--max-atc")] = 0.05,
    min_ks_pvalue: Annotated[float, typer.Option("--min-ks-pvalue")] = 0.01,
    max_adversarial_kl: Annotated[float, typer.Option("--max-adversarial-kl")] = 1.0,
    max_c2st: Annotated[float, typer.Option("--max-c2st")] = 0.6,
    max_ppc_z: Annotated[float, typer.Option("--max-ppc-z")] = 2.0,
    min_contraction: Annotated[float | None, typer.Option("--min-contraction")] = None,
    junit: Annotated[Path | None, typer.Option(help="write the checks as JUnit XML")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Run diagnostics on a stored model: the CI gate.

    Exit 0 when every check passes, 1 when a check fails, 3 when the gate could not
    run (unknown model, bad test data, ...). With no check flag, --tarp --sbc run.
    """
    from sbi_service.diagnostics.report import junit_error_xml, junit_xml
    from sbi_service.workflows.diagnose import DiagnoseRequest, Thresholds, diagnose_model

    _setup_torch()
    if not (tarp or sbc or coverage or robustness or c2st or ppc):
        tarp = sbc = True
    req = DiagnoseRequest(
        model=model,
        version=version,
        tarp=tarp,
        sbc=sbc,
        coverage=coverage,
        robustness=robustness,
        c2st=c2st,
        ppc=ppc,
        num_simulations=num_simulations,
        data=data,
        num_posterior_samples=num_posterior_samples,
        seed=seed,
        report_dir=report,
        thresholds=Thresholds(
            max_atc=max_atc,
            min_ks_pvalue=min_ks_pvalue,
            max_adversarial_kl=max_adversarial_kl,
            max_c2st=max_c2st,
            max_ppc_z=max_ppc_z,
            min_contraction=min_contraction,
        ),
    )
    try:
        result = diagnose_model(_store(), req)
    except Exception as e:  # the gate itself is broken: a distinct exit code for CI
        kind = "error" if isinstance(e, UserError) else f"internal error ({type(e).__name__})"
        err.print(f"{kind}: {e}", highlight=False, markup=False, soft_wrap=True)
        if junit is not None:
            junit.parent.mkdir(parents=True, exist_ok=True)
            junit.write_text(junit_error_xml(str(e)))
        raise typer.Exit(GATE_BROKEN) from None
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(junit_xml(result))
    if as_json:
        _print_json(result)
    else:
        verdict = "[green]PASSED[/green]" if result["passed"] else "[red]FAILED[/red]"
        out.print(f"{model} v{result['version']}: {verdict} ({result['test_data']})")
        for c in result["checks"]:
            mark = "ok  " if c["passed"] else "FAIL"
            out.print(
                f"  {mark} {c['diagnostic']}.{c['name']}: {c['statistic']:.4g} "
                f"{c['comparison']} {c['threshold']:.4g}",
                markup=False,
            )
        for s in result["skipped"]:
            out.print(f"  skip {s['diagnostic']}: {s['reason']}", markup=False)
        per = result["diagnostics"]["contraction"]["values"]["per_parameter"]
        out.print("  contraction: " + " ".join(f"{v:.2f}" for v in per), markup=False)
        out.print(f"report: {report / 'report.html'}", markup=False)
    if not result["passed"]:
        raise typer.Exit(GATE_FAILED)


# -- models ---------------------------------------------------------------------------
@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List stored models with their latest version and each version's diagnostic verdict."""
    from sbi_service.serving.policy import ModelStatus

    store = _store()
    models = store.list_models()
    for m in models:
        status = ModelStatus.read(store, m["model"])
        m["verdicts"] = {v: status.verdict(v) for v in m["versions"]}
    if as_json:
        _print_json(models)
        return
    for m in models:
        c = m["config"]
        verdicts = " ".join(f"v{v}:{verdict}" for v, verdict in m["verdicts"].items())
        out.print(
            f"{m['model']:<24} v{m['version']:<3} {c['estimator']['kind']:<5} "
            f"simulator={c.get('simulator')}  {verdicts}",
            markup=False,
        )


@models_app.command("verify")
def models_verify(
    model: Annotated[str | None, typer.Argument(help="one model (default: all)")] = None,
    record: Annotated[
        bool, typer.Option(help="record the checksums of versions saved before they were")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check every version's files against the sha256 recorded when it was saved.

    Exits 2 when a version is damaged. Versions saved by a release that recorded no
    checksums show ``unchecked``; ``--record`` records theirs (their files as they are now).
    """
    from sbi_service.workflows.models import verify_models

    rows = verify_models(_store(), model, record)
    if as_json:
        _print_json(rows)
    else:
        for r in rows:
            out.print(
                f"{r['model']:<24} v{r['version']:<3} {r['status']:<9} {r['message']}", markup=False
            )
    if any(r["status"] == "damaged" for r in rows):
        raise typer.Exit(2)


# -- serve ----------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    batching: Annotated[
        bool, typer.Option("--batching/--no-batching", help="coalesce requests into batches")
    ] = True,
    batch_rows: Annotated[int | None, typer.Option(help="rows per batched pass")] = None,
    preload: Annotated[
        list[str] | None, typer.Option(help="model to load and warm before /readyz (repeat)")
    ] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log")] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="server processes over one store (each batches its own)")
    ] = 1,
    backend: Annotated[
        str, typer.Option(help="local (uvicorn processes) or ray (Ray Serve replicas)")
    ] = "local",
    replicas: Annotated[
        int, typer.Option(min=0, help="Ray Serve replicas; 0 autoscales (docs/scaling.md)")
    ] = 1,
) -> None:
    """Serve the REST API (settings from SBI_SERVICE_* variables; flags override them)."""
    from sbi_service.api.server import serve as run_server

    if backend not in ("local", "ray"):
        raise UserError(f"unknown --backend {backend!r}; expected local or ray")
    overrides: dict[str, Any] = {"batching": batching}
    if batch_rows is not None:
        overrides["batch_rows"] = batch_rows
    if preload:
        overrides["preload_models"] = preload
    settings = get_settings().model_copy(update=overrides)
    if backend == "ray":
        _serve_on_ray(settings, host, port, replicas)
        return
    run_server(settings, host, port, access_log, workers)


def _serve_on_ray(settings: Any, host: str, port: int, replicas: int) -> None:
    """``serve --backend ray``: Ray Serve until SIGINT or SIGTERM."""
    import signal

    try:
        from sbi_service.api import ray_deployment
    except ImportError:
        raise UserError("--backend ray needs Ray Serve: pip install 'sbi-service[ray]'") from None

    def interrupt(sig: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # stop the local Ray runtime too, as on Ctrl-C
    ray_deployment.run(settings, host, port, replicas)


def main() -> None:
    """Console-script entry: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except UserError as e:
        err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
