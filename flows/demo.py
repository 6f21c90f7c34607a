"""`tmkt demo`: the main job end to end on built-in data, as a user would run it.

1. start a local Prefect server and serve the deployments (`tmkt server start`, `tmkt serve`);
2. `prefect deployment run build-dataset/builtin --watch`: the built-in source (scikit-learn's digits
   recorded by the DVS simulator into N-MNIST files) becomes a versioned store;
3. train `tmkt` and `event` on that store, same backbone and budget, on the CPU (or a GPU if present);
4. write `reports/demo/`: `index.md` with the accuracy table, training curves, the r_m schedule,
   example frames (static, event, mixed) as PNGs, and `summary.json`.

Every service started here is stopped at the end, also on Ctrl-C or failure; the exit code is
non-zero on failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("tmkt.demo")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tmkt demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("reports/demo"), help="report folder")
    parser.add_argument("--data", type=Path, default=Path("data/demo"), help="raw files, store, runs, server")
    parser.add_argument("--epochs", type=int, default=0, help="epochs per method (default: 15 CPU, 40 GPU)")
    parser.add_argument("--backbone", default="", help="default: small on CPU, vgg_snn on GPU")
    parser.add_argument("--recordings-per-class", type=int, default=40, help="built-in recordings per digit")
    parser.add_argument("--methods", default="tmkt,event", help="comma-separated methods to train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0, help="Prefect server port (default: a free one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    data = args.data.resolve()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    services = Services(data / "prefect")
    # SIGTERM (CI timeouts, `kill`) must clean up like Ctrl-C does
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.perf_counter()
    try:
        env = services.start(args.port, data)
        store = data / "builtin" / "store"
        build_seconds = run_build_deployment(env, args.recordings_per_class)
        runs = train_methods(store, data / "runs", args)
        summary = write_report(out, store, runs, build_seconds, time.perf_counter() - started)
    finally:
        services.stop()
    print(f"demo report: {out / 'index.md'}")
    print(json.dumps({m: summary["methods"][m]["val_accuracy"] for m in summary["methods"]}))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class Services:
    """The local Prefect server and the `tmkt serve` process, stopped whatever happens."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.serve: subprocess.Popen | None = None
        self.server_started = False

    def start(self, port: int, data: Path) -> dict[str, str]:
        from flows.server import free_port, start_server

        port = port or free_port()
        log.info("starting a local Prefect server on 127.0.0.1:%d (PREFECT_HOME=%s)", port, self.home)
        record = start_server(port=port, home=self.home)
        self.server_started = True
        env = dict(os.environ)
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=record.api_url,
            TMKT_HOME=str(data),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
        )
        log.info("serving the deployments (tmkt serve)")
        self.serve = subprocess.Popen(
            [*_tmkt(), "serve", "--paused-refresh"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=open(self.home / "serve.log", "ab"),  # noqa: SIM115 (closed with the process)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_deployment(env, "build-dataset/builtin", self.serve)
        return env

    def stop(self) -> None:
        if self.serve is not None and self.serve.poll() is None:
            log.info("stopping tmkt serve")
            try:
                os.killpg(self.serve.pid, signal.SIGTERM)
                self.serve.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.serve.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.server_started:
            from flows.server import stop_server

            log.info("stopping the Prefect server")
            stop_server(self.home)


def _tmkt() -> list[str]:
    """`tmkt` through this interpreter: the code that runs the demo, whatever script is installed."""
    return [sys.executable, "-m", "flows.cli"]


def _prefect() -> str:
    script = Path(sys.executable).parent / "prefect"
    return str(script) if script.exists() else "prefect"


def wait_for_deployment(
    env: dict[str, str], name: str, serve: subprocess.Popen, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise RuntimeError(
                f"tmkt serve exited with code {serve.returncode}; see its log under PREFECT_HOME"
            )
        probe = subprocess.run([_prefect(), "deployment", "inspect", name], env=env, capture_output=True)
        if probe.returncode == 0:
            return
        time.sleep(1.0)
    raise RuntimeError(f"deployment {name} did not appear within {timeout:.0f} s")


def run_build_deployment(env: dict[str, str], recordings_per_class: int) -> float:
    """`prefect deployment run build-dataset/builtin --watch`, exactly as a user types it."""
    options = json.dumps({"recordings_per_class": recordings_per_class})
    command = [
        _prefect(),
        "deployment",
        "run",
        "build-dataset/builtin",
        "--watch",
        "--param",
        f"source_options={options}",
    ]
    log.info("running: %s", " ".join(command[1:]))
    started = time.perf_counter()
    done = subprocess.run(command, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the build-dataset/builtin flow run failed (exit {done.returncode})")
    return time.perf_counter() - started


def train_methods(store: Path, runs: Path, args: argparse.Namespace) -> dict[str, Path]:
    import torch

    from tmkt.config import TrainConfig
    from tmkt.train import train

    gpu = torch.cuda.is_available()
    epochs = args.epochs or (40 if gpu else 15)
    backbone = args.backbone or ("vgg_snn" if gpu else "small")
    out = {}
    for method in [m for m in args.methods.split(",") if m]:
        run_dir = runs / f"{method}-seed{args.seed}"
        log.info("training %s (%s, %d epochs) -> %s", method, backbone, epochs, run_dir)
        config = TrainConfig(
            store=str(store),
            method=method,
            out=str(run_dir),
            seed=args.seed,
            epochs=epochs,
            min_steps=0,  # the demo's budget is its epochs: a few minutes on a CPU
            backbone=backbone,
            batch_size=32,
            # the settings of the N-MNIST comparison (results/): digits must not be mirrored
            lr=5e-3 if backbone == "small" else 1e-3,
            hflip=False,
            checkpoint_every=0,
        )
        train(config)
        out[method] = run_dir
    return out


def write_report(
    out: Path, store: Path, runs: dict[str, Path], build_s: float, total_s: float
) -> dict[str, Any]:
    from storage.reader import DatasetReader
    from tmkt.plots import plot_curves, report_pictures, results_table

    reader = DatasetReader(store)
    results = {m: json.loads((d / "result.json").read_text()) for m, d in runs.items()}
    curves = plot_curves(list(runs.values()), out / "curves.png")
    pictures = report_pictures(store, results.get("tmkt", next(iter(results.values())))["config"], out)
    schedule, frames = pictures["schedule"], pictures["frames"]
    summary = {
        "store": str(store),
        "store_snapshot": reader.snapshot_id,
        "recordings": reader.n_recordings,
        "images": reader.n_images,
        "build_seconds": build_s,
        "total_seconds": total_s,
        "methods": {
            m: {
                k: r.get(k)
                for k in (
                    "val_accuracy",
                    "test_accuracy",
                    "epochs",
                    "samples_per_s",
                    "backbone",
                    "store_snapshot",
                )
            }
            for m, r in results.items()
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    rows = "\n".join(
        f"| {m} | {_pct(r['val_accuracy'])} | {_pct(r.get('test_accuracy'))} | {r['epochs']} | "
        f"{r['samples_per_s']:.0f} |"
        for m, r in summary["methods"].items()
    )
    (out / "index.md").write_text(
        f"""# TMKT demo report

Built-in dataset: {reader.n_recordings} simulated DVS recordings of scikit-learn digits and
{reader.n_images} static digit images, store `{store}` at snapshot `{reader.snapshot_id}`
(built by the `build-dataset/builtin` deployment in {build_s:.0f} s). Evaluation is on event
recordings only. Whole job: {total_s / 60:.1f} min.

| method | val accuracy | test accuracy | epochs | train samples/s |
|---|---|---|---|---|
{rows}

## Validation accuracy per epoch
![curves]({curves.name})

## The r_m schedule (expected event fraction of a mixed sequence over training)
![schedule]({schedule.name})

## Example frames: static image, event recording and their time-step mix
![frames]({frames.name})

## All runs
{results_table(list(runs.values()))}
"""
    )
    return summary


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
