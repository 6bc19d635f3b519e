"""One MLflow run per stage, tagged so runs of the same cell group and compare in `mlflow ui`."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import yaml
from pydantic import BaseModel

from sightbeyond.config import Params, project_root
from sightbeyond.io import NotWritable, is_main_process


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


def describe(stage: str, params: Params, tags: dict[str, str]) -> str:
    """The run's description (the UI's "Description"): what the cell is, in words."""
    what = {"prepare": "data prepared", "stage1": "projector trained", "stage2": "visual instruction tuning",
            "eval_nlp": "the LLM alone on lm-eval's benchmarks", "eval_mm": "the multimodal model on its benchmarks",
            "report": "the paper's tables and figures from these runs"}.get(stage, stage)
    cell = ", ".join(f"{k} {tags[k]}" for k in ("tuning", "modality", "family", "model") if tags.get(k, "none") != "none")
    return f"{stage}: {what}. Backbone {params.backbone}, preset {params.preset_name}, data {params.data}" + \
        (f"; {cell}." if cell else ".")


def open_store(uri: str) -> str:
    """Point MLflow at the store. A SQLite store must be writable, and its folder too (SQLite writes a journal beside
    it): else SQLAlchemy's traceback, which names neither, comes in the middle of a stage. A new one is created (its
    schema migrated) by one process at a time: grid cells started together (`dvc queue start -j N`) would otherwise
    race on the migration, and the losers' runs are lost (measured: benchmarks/tracking_concurrency.py)."""
    import mlflow

    if uri.startswith("sqlite:///"):
        from filelock import FileLock

        path = Path(uri.removeprefix("sqlite:///"))
        if (path.exists() and not os.access(path, os.W_OK)) or not os.access(path.parent, os.W_OK):
            raise NotWritable(f"{path}: the MLflow store (or its folder) is read-only; make it writable or point "
                              "MLFLOW_TRACKING_URI at another store")
        with FileLock(f"{path}.lock", timeout=600):
            mlflow.MlflowClient(uri).search_experiments(max_results=1)  # creates and migrates the schema
    mlflow.set_tracking_uri(uri)
    return uri


def end_dead_runs(experiment_id: str, name: str, keep: str | None = None) -> None:
    """Mark KILLED the runs of this cell left RUNNING by a process of this machine that no longer exists (a killed
    stage cannot end its own run); a resumed run (`keep`) and runs of live processes or other machines stay."""
    import mlflow

    client = mlflow.MlflowClient()
    for run in client.search_runs([experiment_id], f"attributes.run_name = '{name}' AND "
                                  "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if run.info.run_id == keep or tags.get("host") != socket.gethostname() or not tags.get("pid", "").isdigit():
            continue
        if not _alive(int(tags["pid"])):
            client.set_terminated(run.info.run_id, "KILLED")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def ensure_experiment(name: str) -> str:
    """The experiment's id, created if need be. Not `mlflow.set_experiment(name)`: when two processes create the
    experiment at once, the one that loses the race returns without setting it, and its runs go to `Default`
    (MLflow 3.17; seen with 8 writers on a tracking server)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    if (experiment := client.get_experiment_by_name(name)) is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


@contextlib.contextmanager
def stage_run(stage: str, params: Params, *, name: str, tags: dict[str, str] | None = None,
              inputs: list[Path] = (), param_sections: tuple[str, ...] = (), hparams: BaseModel | None = None,
              run_id: str | None = None, system_metrics: bool = False) -> Iterator:
    """Start the stage's run (a child of `mlflow run`'s run when there is one), or continue `run_id`; failures are
    marked FAILED. Only the main process of a distributed run logs: the others get None. `system_metrics`: CPU,
    memory (and GPU, where there is one) sampled while the run lasts, for the training stages."""
    if not is_main_process():
        yield None
        return
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    uri = open_store(tracking_uri())
    try:
        mlflow.set_experiment(experiment_id=(experiment_id := ensure_experiment(params.tracking.experiment)))
    except Exception as err:  # SQLAlchemy's or the server's traceback names neither the store nor the cause plainly
        raise NotWritable(f"{uri}: the MLflow store cannot be used: {str(err).strip().splitlines()[0][:300]}") from None
    # the UI opens an experiment of this kind on its runs, not on the GenAI (traces) view
    mlflow.set_experiment_tag("mlflow.experimentKind", "custom_model_development")
    # `mlflow run` exports its own run's id; left in place, every stage would write into that one run
    parent = os.environ.pop("MLFLOW_RUN_ID", None)
    all_tags = {"stage": stage, "backbone": params.backbone, "data": params.data, "preset": params.preset_name, **(tags or {})}
    if experiment := os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run`: the report can select one experiment
        all_tags["dvc_exp"] = experiment
    if commit := _git("rev-parse", "HEAD"):
        all_tags |= {"mlflow.source.git.commit": commit, "git_commit": commit,
                     "git_dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no")))}
    if params.ad_hoc:  # not what params.yaml says: the report's pipeline cells leave it out
        all_tags["ad_hoc"] = "true"
    all_tags["mlflow.note.content"] = describe(stage, params, all_tags)
    all_tags |= {"host": socket.gethostname(), "pid": str(os.getpid())}
    end_dead_runs(experiment_id, name, keep=run_id)
    if run_id is not None:  # a resumed run already has its tags, params and inputs
        with mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics) as run:
            yield run
        return
    with mlflow.start_run(run_name=name, tags=all_tags, parent_run_id=parent, log_system_metrics=system_metrics) as run:
        dumped = params.model_dump()
        # what a person compares: the cell, the backbone's entry, the preset's values as the stage uses them
        logged = {"backbone": params.backbone, "data": params.data,
                  **{k: all_tags[k] for k in ("tuning", "modality") if k in all_tags},
                  **flatten({"backbones": {params.backbone: params.active.model_dump()}})}
        for section in param_sections:
            logged |= flatten({section: dumped[section]})
        if "model" in param_sections:  # as the run resolved them: null in params.yaml means the preset's
            logged |= {"model.projector": params.projector, "model.image_start_end": params.image_start_end}
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


def dvc_md5(path: Path) -> str:
    """DVC's md5 of a file or directory, as dvc.lock records it, from dvc-data's own hashing."""
    import tempfile

    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as scratch:
        _, _, obj = build(HashFileDB(fs, scratch), str(path), fs, "md5", dry_run=True)
    return obj.hash_info.value


def logged_model(params: Params, path: Path, *, name: str, model_type: str, source_run_id: str | None = None) -> str | None:
    """The MLflow logged model standing for the weights at `path`: an external model (the weights stay in DVC's
    cache, not copied into MLflow) tagged with its DVC path and md5, created once and found again by that md5, so
    the Models tab shows which scores belong to which weights. None outside the main process."""
    if not is_main_process():
        return None
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.set_experiment(params.tracking.experiment)
    md5 = dvc_md5(path)
    found = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list",
                                        filter_string=f"tags.dvc_md5 = '{md5}' AND tags.dvc_path = '{path}'", max_results=1)
    if found:
        return found[0].model_id
    return mlflow.create_external_model(name=name, source_run_id=source_run_id, model_type=model_type,
                                        tags={"dvc_path": str(path), "dvc_md5": md5, "backbone": params.backbone},
                                        experiment_id=experiment.experiment_id).model_id
