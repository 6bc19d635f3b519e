"""Another backbone runs outside the workspace (`dvc exp run --temp`, as the README says): a run that fails there,
offline and without weights, leaves the default's outputs, dvc.lock and params.yaml as they were."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, shrink


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_failed_run_on_another_backbone_leaves_the_defaults_outputs(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    shrink(clone, commit=True)
    env = {**os.environ, "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("SIGHTBEYOND_ROOT", None)

    def dvc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["dvc", *args], cwd=clone, env=env, capture_output=True, text=True, timeout=900)

    built = dvc("repro", "backbone")  # ShapesWorld and the tiny backbone: the default's outputs
    assert built.returncode == 0, built.stderr[-2000:]
    subprocess.run(["git", "commit", "-qam", "the default's lock", "--allow-empty"], cwd=clone, env=env, check=True)
    before = {d: tree_digest(clone / d) for d in ("data/shapesworld", "models/backbones/tiny")}
    lock, params = (clone / "dvc.lock").read_text(), (clone / "params.yaml").read_text()

    failed = dvc("exp", "run", "--temp", "-S", "backbone=llama2")
    assert failed.returncode != 0
    assert "backbones.llama2.local_path" in failed.stdout + failed.stderr  # the param that points at local weights

    assert {d: tree_digest(clone / d) for d in before} == before and all(before.values())
    assert (clone / "dvc.lock").read_text() == lock and (clone / "params.yaml").read_text() == params
