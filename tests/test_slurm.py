"""Two cells of the grid through sbatch on a real Slurm cluster (scripts/slurm/cluster up makes one of this machine):
the inputs job, the cells' array with one cell requeued while it trains, then the node failing under the other
(slurmd, the job steps and everything they run killed at once), the report after both. Nothing the failure cut short is left
as if complete; Slurm requeues both cells once the node is back, and each resumes from its last complete checkpoint
into the same MLflow run, every (metric, step) once."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, shrink

pytestmark = pytest.mark.slow


def slurm_or_skip() -> None:
    if shutil.which("sbatch") is None:
        pytest.skip("Slurm is not installed: apt-get install slurm-wlm munge, then scripts/slurm/cluster up (as root)")
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode:
        pytest.skip("no Slurm controller answers: scripts/slurm/cluster up (as root) starts a one-node cluster")


def our_cluster() -> str | None:
    """Why the node may not be failed here, or None: the test kills slurmd, so only on scripts/slurm/cluster's own."""
    if os.geteuid():
        return "not root"
    conf = Path("/etc/slurm/slurm.conf")
    if not conf.is_file() or "written by sightbeyond's scripts/slurm/cluster" not in conf.read_text():
        return f"{conf} is not scripts/slurm/cluster's: a real cluster's node is not ours to kill"
    return None


def fail_the_node() -> None:
    """What a node's power cut does to its processes: slurmd, every job step's slurmstepd and all they run, stopped
    together and then killed, so that none of them cleans up."""
    import psutil

    daemons = [p for p in psutil.process_iter(["name"]) if p.info["name"] in ("slurmd", "slurmstepd")]
    victims = daemons + [child for d in daemons for child in d.children(recursive=True)]
    for process in victims:
        process.suspend()
    for process in victims:
        process.kill()


def test_two_cells_through_sbatch_survive_a_requeue_and_a_node_failure(tmp_path):
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

        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("sight-beyond-text").experiment_id
        cells = ("lora-image", "lora-text")
        not_failed = our_cluster()
        if not_failed is None:
            checkpoint = clone / ".cells/tiny-lora-image/checkpoints/tiny/full-lora-image/checkpoint-15/trainer_state.json"
            while not checkpoint.exists():
                assert time.monotonic() < deadline and sh("squeue", "-h", "-j", jobs["cells"]).strip(), \
                    "the cell ended before the node could fail under it"
                time.sleep(1)
            fail_the_node()
            while "RUNNING" in sh("squeue", "-h", "-j", jobs["cells"], "-o", "%T"):  # until the controller sees it
                assert time.monotonic() < deadline, sh("scontrol", "show", "node")
                time.sleep(2)
            for cell in cells:  # nothing cut short stands as complete
                work = clone / f".cells/tiny-{cell}"
                assert not (work / f"models/tiny/stage2/full/{cell}").exists()
                assert not subprocess.run(["git", "status", "--porcelain", "results"], cwd=work, capture_output=True,
                                          text=True, check=True).stdout  # the committed results, untouched
                [run] = client.search_runs([experiment], f"attributes.run_name = 'stage2-tiny-full-{cell}'")
                assert run.info.status == "RUNNING"
            assert "lora" not in sh("git", "for-each-ref", "refs/exps")  # no experiment pushed back
            restart = subprocess.run([str(ROOT / "scripts/slurm/cluster"), "up"], capture_output=True, text=True)
            assert restart.returncode == 0, restart.stdout + restart.stderr  # the node is back

        while any(sh("squeue", "-h", "-j", job).strip() for job in jobs.values()):
            assert time.monotonic() < deadline, sh("squeue")
            if "DependencyNeverSatisfied" in sh("squeue", "-h", "-j", jobs["report"], "-o", "%r"):
                break  # a cell failed: the report would wait for ever
            time.sleep(3)
        states = {name: [r["JobState"] for r in records(job)] for name, job in jobs.items()}
        logs = "".join(p.read_text() for p in (clone / "logs/slurm").glob("*.out"))
        assert all(s == "COMPLETED" for rows in states.values() for s in rows), f"{states}\n{logs[-4000:]}"
        assert "lora-text on" in logs and "attempt 2" in logs  # the requeued task ran again
        for cell, step in (("lora-text", 10), ("lora-image", 15)):  # at least from where it was stopped
            resumed = re.search(rf"stage2: resuming MLflow run \w+ from \S+/full-{cell}/checkpoint-(\d+)", logs)
            assert resumed and int(resumed[1]) >= step, logs[-4000:]
        if not_failed is None:
            restarts = {cells[int(r["ArrayTaskId"])]: int(r["Restarts"]) for r in records(jobs["cells"])}
            # lora-image requeued by the controller after the failure; lora-text by scontrol (and by the failure too
            # where its second attempt had started by then)
            assert restarts["lora-image"] >= 1 and restarts["lora-text"] >= 1, restarts
        for cell in cells:
            [run] = client.search_runs([experiment], f"attributes.run_name = 'stage2-tiny-full-{cell}'")
            assert run.info.status == "FINISHED"
            for key in (k for k in run.data.metrics if not k.startswith("system/") and k != "epoch"):
                # (`epoch` comes with the last step's log and again with the Trainer's summary, in every run)
                steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
                assert len(steps) == len(set(steps)), f"{cell} {key}: a step logged twice"
            assert {m.step for m in client.get_metric_history(run.info.run_id, "loss")} >= {5, 10, 15, 20, 25, 30}
            for family in ("pope", "reliance"):  # (every cell's) its evaluations ran to the end, then the experiment came back
                [evaluation] = client.search_runs([experiment], f"attributes.run_name = 'eval_mm-tiny-full-{cell}-{family}'")
                assert evaluation.info.status == "FINISHED"
            assert f"tiny-{cell}-{jobs['cells']}" in sh("git", "for-each-ref", "refs/exps")
            assert not (clone / f".cells/tiny-{cell}/checkpoints/tiny/full-{cell}").exists()  # gone once it ended well
        assert (clone / "reports/README.md").is_file()  # the report job ran once both cells had ended well
    if not_failed is not None:
        pytest.skip(f"requeue checked; the node failure was not tried: {not_failed}")
