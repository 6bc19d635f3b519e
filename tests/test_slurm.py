"""Two cells of the grid through sbatch on a real Slurm cluster (scripts/slurm/cluster up makes one of this machine):
the inputs job, the cells' array with one cell requeued while it trains, the report after both. The requeued cell
resumes from its checkpoint into the same MLflow run, every (metric, step) once."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import yaml

from conftest import ROOT, shrink

pytestmark = pytest.mark.slow


def slurm_or_skip() -> None:
    if shutil.which("sbatch") is None:
        pytest.skip("Slurm is not installed: apt-get install slurm-wlm munge, then scripts/slurm/cluster up (as root)")
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode:
        pytest.skip("no Slurm controller answers: scripts/slurm/cluster up (as root) starts a one-node cluster")


def test_two_cells_through_sbatch_and_a_requeued_cell_resumes_into_its_run(tmp_path):
    slurm_or_skip()
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from mlflow import MlflowClient
    from slurm_grid import records
    from tracking_concurrency import TrackingServer

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    shrink(clone)
    params = yaml.safe_load((clone / "params.yaml").read_text())  # long enough to be requeued between checkpoints
    params["presets"]["tiny"]["stage2"] |= {"max_steps": 30, "eval_steps": 10}
    params["stage2"]["save_steps"] = 5
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", "shrunk, with checkpoints"], cwd=clone, check=True)
    (clone / ".venv").symlink_to(ROOT / ".venv")

    with TrackingServer(tmp_path / "server") as server:
        env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}",
               "HF_HUB_OFFLINE": "1"}
        env.pop("SIGHTBEYOND_ROOT", None)

        def sh(*args) -> str:
            done = subprocess.run(args, cwd=clone, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
            return done.stdout

        words = sh("scripts/slurm/submit", "tiny", "2", "0,1").split()
        jobs = dict(zip(words[0::2], words[1::2]))
        checkpoint = clone / ".cells/tiny-lora-text/checkpoints/tiny/full-lora-text/checkpoint-10/trainer_state.json"
        deadline = time.monotonic() + 900
        while not checkpoint.exists():
            assert time.monotonic() < deadline and sh("squeue", "-h", "-j", jobs["cells"]).strip(), \
                "the cell ended before it could be requeued"
            time.sleep(1)
        sh("scontrol", "requeue", f"{jobs['cells']}_1")  # Slurm kills the running task and queues it again
        while any(sh("squeue", "-h", "-j", job).strip() for job in jobs.values()):
            assert time.monotonic() < deadline, sh("squeue")
            if "DependencyNeverSatisfied" in sh("squeue", "-h", "-j", jobs["report"], "-o", "%r"):
                break  # a cell failed: the report would wait for ever
            time.sleep(3)
        states = {name: [r["JobState"] for r in records(job)] for name, job in jobs.items()}
        logs = "".join(p.read_text() for p in (clone / "logs/slurm").glob("*.out"))
        assert all(s == "COMPLETED" for rows in states.values() for s in rows), f"{states}\n{logs[-4000:]}"
        assert "lora-text on" in logs and "attempt 2" in logs  # the requeued task ran again

        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("sight-beyond-text").experiment_id
        for cell in ("lora-image", "lora-text"):
            [run] = client.search_runs([experiment], f"attributes.run_name = 'stage2-tiny-full-{cell}'")
            assert run.info.status == "FINISHED"
            for key in (k for k in run.data.metrics if not k.startswith("system/") and k != "epoch"):
                # (`epoch` comes with the last step's log and again with the Trainer's summary, in every run)
                steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
                assert len(steps) == len(set(steps)), f"{cell} {key}: a step logged twice"
            assert {m.step for m in client.get_metric_history(run.info.run_id, "loss")} >= {5, 10, 15, 20, 25, 30}
            assert (clone / f".cells/tiny-{cell}/results/eval_mm/tiny-full-{cell}.json").is_file()
        assert (clone / "reports/README.md").is_file()  # the report job ran once both cells had ended well
