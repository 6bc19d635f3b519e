"""The tiny default's four grid cells as DVC's own queue runs them: `dvc exp run --queue` one experiment per cell,
then `dvc queue start -j 1` against `-j 2`, side by side in one run, each in a fresh clone whose inputs (data,
backbone, stage 1) were computed first, so both variants time the cells alone.

    .venv/bin/python benchmarks/dvc_queue.py [--jobs 2]

Each worker's torch gets the machine's cores divided by the workers (OMP_NUM_THREADS, as the Slurm cells get their
task's CPUs): unpinned, every worker's torch takes every core. Prints each variant's wall time (first start to last
experiment's end), their ratio, and checks: every queued experiment succeeded, every MLflow stage-2 run FINISHED, and
each cell's results equal across the variants.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from slurm_grid import differences  # noqa: E402
CELLS = ("lora-image", "lora-text", "ft-image", "ft-text")


def variant(folder: Path, jobs: int) -> dict:
    clone = folder / f"clone-j{jobs}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    (clone / ".venv").symlink_to(ROOT / ".venv")
    env = {**os.environ, "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{folder / f'mlflow-j{jobs}.db'}"}
    env.pop("SIGHTBEYOND_ROOT", None)
    threads = max(1, os.cpu_count() // jobs)

    def sh(*args) -> str:
        done = subprocess.run(args, cwd=clone, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{args}: {(done.stdout + done.stderr)[-2000:]}")
        return done.stdout

    sh("dvc", "repro", "stage1", "prepare", "eval_nlp_base")  # the inputs, outside the timing
    sh("git", "commit", "-qam", "inputs")
    for cell in CELLS:
        tuning, modality = cell.split("-")
        sh("dvc", "exp", "run", "--queue", "-n", cell, "-S", f"grid.tuning=[{tuning}]", "-S", f"grid.modality=[{modality}]",
           "eval_nlp", "eval_mm")
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))  # the workers inherit them
    start = time.perf_counter()
    sh("dvc", "queue", "start", "-j", str(jobs))
    restarts, stalled_since = 0, None
    while any(state in (status := sh("dvc", "queue", "status")) for state in ("Queued", "Running")):
        stalled = "Running" not in status and "Worker status: 0 active" in status
        stalled_since = (stalled_since or time.perf_counter()) if stalled else None
        if stalled and time.perf_counter() - stalled_since > 30:
            # treeverse/dvc#10562: workers can end or idle with experiments still queued; starting them again goes on
            print(f"-j {jobs}: experiments queued, none running for 30 s (dvc#10562): dvc queue start again")
            sh("dvc", "queue", "start", "-j", str(jobs))
            restarts, stalled_since = restarts + 1, None
        time.sleep(5)
    wall = time.perf_counter() - start
    status = sh("dvc", "queue", "status")
    sh("dvc", "queue", "stop")
    results = {}
    for cell in CELLS:
        ref = next(line.split()[-1] for line in sh("git", "for-each-ref", "refs/exps").splitlines() if line.endswith(f"/{cell}"))
        results[cell] = {stage: json.loads(sh("git", "show", f"{ref}:results/{stage}/tiny-full-{cell}.json"))
                         for stage in ("eval_nlp", "eval_mm")}
    import sqlite3

    db = sqlite3.connect(folder / f"mlflow-j{jobs}.db")
    statuses = [s for (s,) in db.execute("select status from runs where name like 'stage2-%'")]
    return {"wall_s": wall, "threads": threads, "restarts": restarts, "succeeded": status.count("Success"), "stage2_runs": statuses, "results": results}


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--jobs", type=int, default=2)
    args = cli.parse_args()
    with tempfile.TemporaryDirectory(prefix="dvc-queue-") as scratch:
        one, many = variant(Path(scratch), 1), variant(Path(scratch), args.jobs)
    print(f"dvc queue start -j 1: {one['wall_s']:.0f} s    -j {args.jobs}: {many['wall_s']:.0f} s    "
          f"ratio {one['wall_s'] / many['wall_s']:.2f}x")
    for name, got in (("-j 1", one), (f"-j {args.jobs}", many)):
        print(f"{name} ({got['threads']} torch threads each): {got['succeeded']}/4 experiments succeeded; stage-2 runs {got['stage2_runs']}; "
              f"workers started again {got['restarts']} times")
    print("results equal across the variants:", one["results"] == many["results"])
    for cell, stage, key, a, b in differences(one["results"], many["results"]):
        print(f"    differs: {cell} {stage} {key}: {a} (-j 1) {b} (-j {args.jobs})")


if __name__ == "__main__":
    main()
