"""One MLflow run per stage, tagged so runs of the same cell group and compare in `mlflow ui`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import yaml
from pydantic import BaseModel

from sightbeyond.config import Params, project_root
from sightbeyond.io import is_main_process


def tracking_uri() -> str:
    # absolute, so `dvc exp run --temp` / `--queue` (which run in other directories) log to the same store
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def dvc_hashes(paths: list[Path]) -> dict[str, str]:
    """DVC's md5 of each input, read from dvc.lock (where an upstream stage recorded it)."""
    lock = project_root() / "dvc.lock"
    if not lock.exists():
        return {}
    recorded = {}
    for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
        for entry in stage.get("outs", []) + stage.get("deps", []):
            recorded[os.path.normpath(entry["path"])] = entry.get("md5")
    return {str(p): recorded[os.path.normpath(p)] for p in paths if recorded.get(os.path.normpath(p))}


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@contextlib.contextmanager
def stage_run(stage: str, params: Params, *, name: str, tags: dict[str, str] | None = None,
              inputs: list[Path] = (), param_sections: tuple[str, ...] = (), hparams: BaseModel | None = None,
              run_id: str | None = None) -> Iterator:
    """Start the stage's run (a child of `mlflow run`'s run when there is one), or continue `run_id`; failures are
    marked FAILED. Only the main process of a distributed run logs: the others get None."""
    if not is_main_process():
        yield None
        return
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(params.tracking.experiment)
    # `mlflow run` exports its own run's id; left in place, every stage would write into that one run
    parent = os.environ.pop("MLFLOW_RUN_ID", None)
    all_tags = {"stage": stage, "backbone": params.backbone, "data": params.data, "preset": params.preset_name, **(tags or {})}
    if experiment := os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run`: the report can select one experiment
        all_tags["dvc_exp"] = experiment
    if commit := _git("rev-parse", "HEAD"):
        all_tags |= {"mlflow.source.git.commit": commit, "git_commit": commit,
                     "git_dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no")))}
    if run_id is not None:  # a resumed run already has its tags, params and inputs
        with mlflow.start_run(run_id=run_id) as run:
            yield run
        return
    with mlflow.start_run(run_name=name, tags=all_tags, parent_run_id=parent) as run:
        dumped = params.model_dump()
        logged = {"backbone": params.backbone, **flatten({"backbones": {params.backbone: params.active.model_dump()}})}
        for section in param_sections:
            logged |= flatten({section: dumped[section]})
        if hparams is not None:  # the preset's values as this stage uses them, under the stage's name
            logged |= {"preset": params.preset_name, **flatten({stage: hparams.model_dump()})}
        mlflow.log_params(logged)
        hashes = dvc_hashes(list(inputs))
        for path in inputs:
            digest = hashes.get(str(path))
            with warnings.catch_warnings():  # a local path matches two equivalent source types
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(str(Path(path).resolve()))
            dataset = MetaDataset(source, name=str(path), digest=digest[:36] if digest else None)
            mlflow.log_input(dataset, context=stage, tags={"dvc_md5": digest or "untracked"})
        yield run
