"""The tiny default's four grid cells through Slurm, 2 at a time, against one sequential `dvc repro`, side by side in
one run, on a one-node cluster of this machine (scripts/slurm/cluster) and a tracking server on PostgreSQL.

    .venv/bin/python benchmarks/slurm_grid.py [--parallel 2] [--keep]

Each variant is a fresh clone. The sequential one is `dvc repro` as one Slurm job of one CPU (the grid's cells one
after another); the other is scripts/slurm/submit (inputs, the cells' array, the report). Both give torch one thread
per process: with another thread count its reductions add in another order and the results move in their last bits
(measured with benchmarks/dvc_queue.py). Prints each cell's time (its MLflow runs' added up) and the four cells' wall
time (first start to last end), then checks: every MLflow run FINISHED, each run's (metric, step) count and each cell's results
equal to the sequential `dvc repro`'s. Needs root (apt-get, daemons).
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


def finished(project: Path, jobs: dict[str, str]) -> None:
    for job in jobs.values():
        wait(job)
    states = {name: [r["JobState"] for r in records(job)] for name, job in jobs.items()}
    if any(state != "COMPLETED" for rows in states.values() for state in rows):
        logs = "".join(p.read_text()[-1500:] for p in sorted((project / "logs/slurm").glob("*.out")))
        raise SystemExit(f"jobs did not complete: {states}\n{logs}")


def environment(project: Path, uri: str) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{project / '.venv/bin'}:{os.environ['PATH']}"}
    env.pop("SIGHTBEYOND_ROOT", None)
    return env


def results(workspace: Path, cell: str) -> dict:
    return {stage: json.loads((workspace / f"results/{stage}/tiny-full-{cell}.json").read_text())
            for stage in ("eval_nlp", "eval_mm")}


def repro(project: Path, uri: str) -> dict:
    """`dvc repro` of the whole default pipeline in one job of one CPU, as the cells' tasks get."""
    (project / "logs/slurm").mkdir(parents=True)
    job = sh("sbatch", "--parsable", "--job-name=sightbeyond-repro", "--cpus-per-task=1", "--output=logs/slurm/%x-%j.out",
             "--export=ALL,OMP_NUM_THREADS=1,MKL_NUM_THREADS=1", "--wrap", "dvc repro", cwd=project,
             env=environment(project, uri)).strip()
    finished(project, {"repro": job})
    return {"job_s": seconds(records(job)[0]), "results": {cell: results(project, cell) for cell in CELLS}}


def grid(project: Path, uri: str, parallel: int) -> dict:
    jobs = dict(zip(("inputs", "cells", "report"), sh("scripts/slurm/submit", "tiny", str(parallel), cwd=project,
                                                      env=environment(project, uri)).split()[1::2]))
    finished(project, jobs)
    tasks = {CELLS[int(r["ArrayTaskId"])]: seconds(r) for r in records(jobs["cells"])}
    return {"tasks_s": tasks, "inputs_s": seconds(records(jobs["inputs"])[0]),
            "results": {cell: results(project / f".cells/tiny-{cell}", cell) for cell in tasks}}


def differences(a: dict, b: dict) -> list[tuple[str, str, str, object, object]]:
    """(cell, stage, key, a's value, b's value) wherever two variants' results ({cell: {stage: metrics}}) differ."""
    return [(cell, stage, key, a[cell][stage].get(key), b[cell][stage].get(key))
            for cell in a for stage in a[cell]
            for key in sorted(k for k in a[cell][stage].keys() | b[cell][stage].keys()
                              if a[cell][stage].get(k) != b[cell][stage].get(k))]


def runs(uri: str) -> dict[str, dict]:
    """Per stage run of the cells: status, (metric, step) count, start and end (s)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sight-beyond-text").experiment_id
    out = {}
    for run in client.search_runs([experiment], max_results=10000):  # MLflow's filters have no OR
        if run.data.tags.get("stage") not in ("stage2", "eval_nlp", "eval_mm"):
            continue
        pairs = sum(len(client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics
                    if not key.startswith("system/"))
        out[run.info.run_name] = {"status": run.info.status, "points": pairs, "start": run.info.start_time / 1000,
                                  "end": (run.info.end_time or run.info.start_time) / 1000}
    return out


def spans(found: dict[str, dict]) -> dict[str, float]:
    """Per cell, its runs' time added up (`dvc repro` runs stage by stage, so one cell's runs are far apart); and the
    four cells' together, from the first run's start to the last one's end."""
    cells = {cell: [r for name, r in found.items() if name.endswith(f"tiny-full-{cell}") or f"tiny-full-{cell}-" in name]
             for cell in CELLS}
    every = [r for rows in cells.values() for r in rows]
    return {cell: sum(r["end"] - r["start"] for r in rows) for cell, rows in cells.items()} | \
        {"all four": max(r["end"] for r in every) - min(r["start"] for r in every)}


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--parallel", type=int, default=2)
    cli.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    args = cli.parse_args()
    sh(str(ROOT / "scripts/slurm/cluster"), "up")
    measured = {}
    with tempfile.TemporaryDirectory(prefix="slurm-grid-") as scratch:
        for name, run in (("dvc repro", lambda project, uri: repro(project, uri)),
                          (f"{args.parallel} at a time", lambda project, uri: grid(project, uri, args.parallel))):
            with PostgresCluster() as db, TrackingServer(Path(scratch) / f"server-{len(measured)}", db.uri) as server:
                measured[name] = run(clone(Path(scratch) / f"clone-{len(measured)}"), server.uri)
                measured[name]["runs"] = runs(server.uri)
    if not args.keep:
        sh(str(ROOT / "scripts/slurm/cluster"), "down")

    (sequential, seq), (concurrent, con) = measured.items()
    times = {name: spans(got["runs"]) for name, got in measured.items()}
    print("wall time per cell (its MLflow runs added up; all four: first start to last end), one CPU per process")
    print(f"{'cell':<12}{sequential + ', one job':>24}{concurrent + ', array':>24}{'Slurm task':>14}")
    for cell in (*CELLS, "all four"):
        task = f"{con['tasks_s'][cell]:>13.0f}s" if cell in CELLS else ""
        print(f"{cell:<12}{times[sequential][cell]:>23.0f}s{times[concurrent][cell]:>23.0f}s{task}")
    print(f"ratio (all four) {times[sequential]['all four'] / times[concurrent]['all four']:.2f}x; the `dvc repro` job "
          f"{seq['job_s']:.0f} s in all, the array's inputs job {con['inputs_s']:.0f} s")
    for name, got in measured.items():
        unfinished = [r for r, v in got["runs"].items() if v["status"] != "FINISHED"]
        print(f"{name}: {len(got['runs'])} runs, unfinished {unfinished or 'none'}")
    points = {name: sorted((run, v["points"]) for run, v in got["runs"].items()) for name, got in measured.items()}
    print("(metric, step) count per run equal to `dvc repro`'s:", points[sequential] == points[concurrent])
    for run, count in sorted(set(points[sequential]) ^ set(points[concurrent])):
        print(f"    differs: {run} {count} ({sequential if (run, count) in points[sequential] else concurrent})")
    print("results equal to `dvc repro`'s:", seq["results"] == con["results"])
    for cell, stage, key, a, b in differences(seq["results"], con["results"]):
        print(f"    differs: {cell} {stage} {key}: {a} ({sequential}) {b} ({concurrent})")


if __name__ == "__main__":
    main()
