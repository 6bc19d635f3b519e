"""The tiny default's four grid cells through Slurm, 2 at a time against one after another, side by side in one run,
on a one-node cluster of this machine (scripts/slurm/cluster) and a tracking server on PostgreSQL.

    .venv/bin/python benchmarks/slurm_grid.py [--parallel 2] [--keep]

Each variant is a fresh clone submitted with scripts/slurm/submit (inputs, the cells' array, the report). Prints each
cell's wall time (Slurm's Start/End) and the array's, then checks: every MLflow run FINISHED, each run's (metric, step)
count equal across the variants, each cell's results equal to the sequential one's. Needs root (apt-get, daemons).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from tracking_concurrency import PostgresCluster, TrackingServer  # noqa: E402

CELLS = ("lora-image", "lora-text", "ft-image", "ft-text")


def sh(*args, cwd=ROOT, env=None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(map(str, args))}: {(done.stdout + done.stderr)[-2000:]}")
    return done.stdout


def clone(folder: Path) -> Path:
    """A fresh clone of this commit, using this checkout's .venv (the code it runs is this commit's)."""
    sh("git", "clone", "-q", str(ROOT), str(folder))
    (folder / ".venv").symlink_to(ROOT / ".venv")
    return folder


def wait(job: str) -> None:
    while sh("squeue", "-h", "-j", job).strip():
        time.sleep(5)


def records(job: str) -> list[dict]:
    """Each task's record as the controller keeps it (no accounting database here, so no sacct; scripts/slurm/cluster
    keeps ended jobs an hour): JobState, StartTime, EndTime, Restarts, ArrayTaskId."""
    out = sh("scontrol", "show", "job", "-o", job)
    return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines() if line.strip()]


def seconds(row: dict) -> float:
    return (datetime.fromisoformat(row["EndTime"]) - datetime.fromisoformat(row["StartTime"])).total_seconds()


def grid(project: Path, uri: str, parallel: int) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{project / '.venv/bin'}:{os.environ['PATH']}"}
    env.pop("SIGHTBEYOND_ROOT", None)
    jobs = dict(zip(("inputs", "cells", "report"), sh("scripts/slurm/submit", "tiny", str(parallel), cwd=project, env=env)
                    .split()[1::2]))
    for job in jobs.values():
        wait(job)
    states = {name: [r["JobState"] for r in records(job)] for name, job in jobs.items()}
    if any(state != "COMPLETED" for rows in states.values() for state in rows):
        logs = "".join(p.read_text()[-1500:] for p in sorted((project / "logs/slurm").glob("*.out")))
        raise SystemExit(f"jobs did not complete: {states}\n{logs}")
    cells = {CELLS[int(r["ArrayTaskId"])]: r for r in records(jobs["cells"])}
    start = min(datetime.fromisoformat(r["StartTime"]) for r in cells.values())
    end = max(datetime.fromisoformat(r["EndTime"]) for r in cells.values())
    results = {cell: {stage: json.loads((project / f".cells/tiny-{cell}/results/{stage}/tiny-full-{cell}.json").read_text())
                      for stage in ("eval_nlp", "eval_mm")} for cell in cells}
    return {"cells_s": {c: seconds(r) for c, r in cells.items()}, "array_s": (end - start).total_seconds(),
            "inputs_s": seconds(records(jobs["inputs"])[0]), "results": results}


def runs(uri: str) -> dict[str, dict]:
    """Per stage run of the cells: status and its (metric, step) count."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sight-beyond-text").experiment_id
    out = {}
    for run in client.search_runs([experiment], max_results=10000):  # MLflow's filters have no OR
        if run.data.tags.get("stage") not in ("stage2", "eval_nlp", "eval_mm"):
            continue
        pairs = sum(len(client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics
                    if not key.startswith("system/"))
        out[f"{run.info.run_name}#{run.info.run_id[:6]}"] = {"status": run.info.status, "points": pairs,
                                                              "name": run.info.run_name}
    return out


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--parallel", type=int, default=2)
    cli.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    args = cli.parse_args()
    sh(str(ROOT / "scripts/slurm/cluster"), "up")
    measured = {}
    with tempfile.TemporaryDirectory(prefix="slurm-grid-") as scratch:
        for name, parallel in (("one after another", 1), (f"{args.parallel} at a time", args.parallel)):
            with PostgresCluster() as db, TrackingServer(Path(scratch) / f"server-{parallel}", db.uri) as server:
                measured[name] = grid(clone(Path(scratch) / f"clone-{parallel}"), server.uri, parallel)
                measured[name]["runs"] = runs(server.uri)
    if not args.keep:
        sh(str(ROOT / "scripts/slurm/cluster"), "down")

    (sequential, seq), (concurrent, con) = measured.items()
    print(f"{'cell':<12}{sequential:>20}{concurrent:>20}")
    for cell in CELLS:
        print(f"{cell:<12}{seq['cells_s'][cell]:>19.0f}s{con['cells_s'][cell]:>19.0f}s")
    print(f"{'all four':<12}{seq['array_s']:>19.0f}s{con['array_s']:>19.0f}s   ratio {seq['array_s'] / con['array_s']:.2f}x")
    print(f"{'inputs job':<12}{seq['inputs_s']:>19.0f}s{con['inputs_s']:>19.0f}s")
    for name, got in measured.items():
        unfinished = [r for r, v in got["runs"].items() if v["status"] != "FINISHED"]
        print(f"{name}: {len(got['runs'])} runs, unfinished {unfinished or 'none'}")
    points = {name: sorted((v["name"], v["points"]) for v in got["runs"].values()) for name, got in measured.items()}
    print("(metric, step) count per run equal:", points[sequential] == points[concurrent])
    print("results equal to the sequential run's:", seq["results"] == con["results"])


if __name__ == "__main__":
    main()
