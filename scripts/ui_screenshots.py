"""Look at the MLflow UI as a person would: serve the project's store on loopback, and let headless Chromium (Debian's
`chromium`) take screenshots of the experiment page and of the stage-2 runs compared.

    .venv/bin/python scripts/ui_screenshots.py [--out docs/ui] [--store sqlite:///$PWD/mlflow.db]

Writes experiment.png (the runs the experiment page opens on), compare_stage2.png (the compare view of the latest
stage-2 run of each cell) and stepwise_stage2.png (their step-wise TruthfulQA-mc1 and ETHICS curves), and prints
their paths.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshot(url: str, out: Path, size: str = "1600,1100") -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("no chromium on PATH: `apt-get install chromium` (Debian)")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size}",
                    "--virtual-time-budget=20000", f"--screenshot={out}", url], check=True, capture_output=True, timeout=120)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--store", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    cli.add_argument("--experiment", default="sight-beyond-text")
    cli.add_argument("--out", type=Path, default=ROOT / "docs/ui")
    args = cli.parse_args()
    import mlflow

    mlflow.set_tracking_uri(args.store)
    experiment = mlflow.get_experiment_by_name(args.experiment)
    if experiment is None:
        sys.exit(f"{args.store}: no experiment {args.experiment!r}; run the pipeline first (dvc repro)")
    latest = {}  # the latest finished run of each stage-2 cell, as the report reads them
    for run in mlflow.search_runs([experiment.experiment_id], "tags.stage = 'stage2' AND attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time ASC"], output_format="list"):
        latest[tuple(run.data.tags.get(k) for k in ("backbone", "data", "tuning", "modality"))] = run
    stage2 = list(latest.values())
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.store, "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):  # the server takes a few seconds to start
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            sys.exit("mlflow ui did not start within a minute")
        args.out.mkdir(parents=True, exist_ok=True)
        # MLflow 3.17 UI: the sidebar's GenAI / Model training switch (default GenAI) overrides the experiment's
        # mlflow.experimentKind tag; the workflowType query parameter sets the switch.
        shots = {"experiment.png": f"{base}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"}
        if stage2:
            runs = urllib.parse.quote(json.dumps([r.info.run_id for r in stage2]))
            experiments = urllib.parse.quote(json.dumps([experiment.experiment_id]))
            shots["compare_stage2.png"] = f"{base}/#/compare-runs?runs={runs}&experiments={experiments}"
            # the step-wise curves of those runs, as the compare page's metric links open them
            keys = urllib.parse.quote(json.dumps(["truthfulqa_mc1/acc", "ethics/acc"]))
            metric = urllib.parse.quote(json.dumps("truthfulqa_mc1/acc"))
            shots["stepwise_stage2.png"] = (f"{base}/#/metric?runs={runs}&metric={metric}&experiments={experiments}"
                                            f"&plot_metric_keys={keys}&plot_layout={{}}&x_axis=step&y_axis_scale=linear"
                                            "&line_smoothness=1&show_point=true&deselected_curves=[]"
                                            "&last_linear_y_axis_range=[]")
        for name, url in shots.items():
            screenshot(url, args.out / name)
            print(args.out / name)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
