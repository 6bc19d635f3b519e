"""`mlflow run` with `--env-manager uv` (an environment built from python_env.yaml out of the package index; MLflow's
default, virtualenv, would fetch Python from python.org): one cell of the tiny chain, shrunk so the test stays short,
each stage logging a run under the project's run. `--env-manager local` runs the same entry point in the README's
.venv, which every other end-to-end test uses; its own run of the chain (140 s; this one 286 s) was dropped to keep
CI within its 30 minutes (30 min 12 s with it, 2026-12-08)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, shrink


@pytest.mark.slow
def test_mlflow_run_of_one_cell(tmp_path):
    import mlflow

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    shrink(clone)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": store,
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "UV_CACHE_DIR": str(Path.home() / ".cache/uv"),
           # MLflow reuses an environment by python_env.yaml's hash alone: one built for an earlier (deleted) clone
           # holds an editable install of that clone
           "MLFLOW_ENV_ROOT": str(tmp_path / "envs")}
    env.pop("SIGHTBEYOND_ROOT", None)
    done = subprocess.run(["mlflow", "run", str(clone), "-P", "backbone=tiny", "-P", "tuning=lora", "-P", "modality=text",
                           "--env-manager", "uv", "--experiment-name", "sight-beyond-text"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(experiment_names=["sight-beyond-text"], output_format="list")
    project = [r for r in runs if "stage" not in r.data.tags]
    stages = {(r.data.tags["stage"], r.data.tags.get("tuning")): r for r in runs if "stage" in r.data.tags}
    assert len(project) == 1 and project[0].info.status == "FINISHED"
    assert {("stage2", "lora"), ("eval_nlp", "none"), ("eval_nlp", "lora")} <= stages.keys()
    assert all(r.info.status == "FINISHED" for r in stages.values())
    assert all(r.data.tags.get("mlflow.parentRunId") == project[0].info.run_id for r in stages.values())
