"""Resuming a killed training run: from its last complete checkpoint, into the same MLflow run, no step logged twice.

The trainer directory holds `run.json` (the configuration's fingerprint and the MLflow run id) beside the Trainer's
checkpoints. A rerun with the same fingerprint continues that run; any other configuration starts afresh, so a
checkpoint is never resumed into a run it does not belong to.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from transformers.integrations import MLflowCallback
from transformers.trainer_callback import ExportableState

from sightbeyond.config import Params
from sightbeyond.io import is_main_process, write_json

RUN_FILE = "run.json"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Resume:
    run_id: str | None  # the MLflow run to continue
    checkpoint: str | None  # the last complete checkpoint
    logged: dict[str, int]  # per metric, the last step the run already holds: the rerun does not log it again

    def logged_through(self, prefixes: tuple[str, ...]) -> int:
        """The last step of a step-wise evaluation whose metrics (`<prefix>/<metric>`, logged in one batch per step)
        start with one of `prefixes`."""
        return max((step for key, step in self.logged.items() if key.split("/")[0] in prefixes), default=-1)


def fingerprint(params: Params, keys: tuple[str, ...], inputs: list[Path], **what) -> str:
    """What makes two runs the same run: the params `keys` (those dvc.yaml declares for the stage, so a change DVC
    reruns it for is one that starts afresh, and no other is), and each input's DVC hash and newest modification
    time."""
    from sightbeyond.tracking.runs import dvc_hashes

    hashes = dvc_hashes(inputs)
    state = {str(p): (hashes.get(str(p)), max((f.stat().st_mtime_ns for f in Path(p).rglob("*")), default=None))
             for p in inputs}
    dump = params.model_dump(mode="json")
    dump["backbones"] = {"{backbone}": params.active.model_dump(mode="json")}  # by name: a hub id or path holds dots
    settings = {key: functools.reduce(dict.get, key.split("."), dump) for key in keys}
    blob = json.dumps({"params": settings, "inputs": state, **what}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def last_complete_checkpoint(trainer_dir: Path) -> str | None:
    """The newest checkpoint whose trainer_state.json exists: the Trainer writes that file last, so a checkpoint cut
    short by the kill is skipped, and removed (a later save of its step would write into it, and until then it
    looks like a checkpoint to anyone listing the directory)."""
    steps = sorted((int(m[1]), p) for p in trainer_dir.glob("checkpoint-*") if (m := CHECKPOINT.match(p.name)))
    complete = [(step, p) for step, p in steps if (p / "trainer_state.json").is_file()]
    last = complete[-1][0] if complete else -1
    for step, cut in steps:
        if step > last and is_main_process():
            print(f"removing {cut}: cut short by the kill (no trainer_state.json)")
            shutil.rmtree(cut, ignore_errors=True)
    return str(complete[-1][1]) if complete else None


def logged_steps(run_id: str) -> dict[str, int]:
    """Per training metric, the last step the run holds. Per metric, because a kill can fall between two metrics
    of one step (the step-wise evaluation logs before the trainer does); system metrics count samples, not steps."""
    from mlflow import MlflowClient

    client = MlflowClient()
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("system/")]
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in keys}


def find(trainer_dir: Path, fp: str) -> Resume:
    saved = trainer_dir / RUN_FILE
    if saved.is_file():
        state = json.loads(saved.read_text())
        if state.get("fingerprint") == fp:
            return Resume(state["run_id"], last_complete_checkpoint(trainer_dir), logged_steps(state["run_id"]))
    if trainer_dir.exists() and is_main_process():
        shutil.rmtree(trainer_dir)  # another configuration's checkpoints
    return Resume(None, None, {})


@contextlib.contextmanager
def resumable_run(stage: str, params: Params, *, trainer_dir: Path, fingerprint: str, **stage_run_args) -> Iterator[Resume]:
    """The stage's MLflow run, continued if a killed attempt of the same configuration left one; on success the
    checkpoints go (the result is saved), so a later rerun starts afresh."""
    from sightbeyond.tracking.runs import stage_run

    resume = find(trainer_dir, fingerprint)
    if resume.run_id and is_main_process():
        print(f"{stage}: resuming MLflow run {resume.run_id} from {resume.checkpoint or 'its start (no complete checkpoint)'}")
    with stage_run(stage, params, run_id=resume.run_id, system_metrics=True, **stage_run_args) as run:
        if run is not None:
            write_json(trainer_dir / RUN_FILE, {"fingerprint": fingerprint, "run_id": run.info.run_id})
        yield resume
    if is_main_process():
        shutil.rmtree(trainer_dir, ignore_errors=True)


class ResumableMLflowCallback(MLflowCallback, ExportableState):
    """transformers' MLflow logging of the training metrics into the stage's run, made exact across a kill: a
    resumed run logs no (metric, step) the killed attempt already logged, and its `num_tokens` and `train_loss` are
    an uninterrupted run's (TRL's token count and the Trainer's loss total restart from zero on resume); so are
    `train_runtime` and the `train_*_per_second` rates, over the training time of every segment up to the checkpoint
    the next one resumed from (the Trainer times only its own call). That time travels in the checkpoint's
    trainer_state.json (ExportableState), written with the checkpoint it belongs to.

    Its `setup` would log every TrainingArguments field and the whole model config as params (about 200, which bury
    the few a person compares in the UI); the stage's run already holds those, and the model config goes in once as
    the artifact `config.json`."""

    def __init__(self, logged: dict[str, int] | None = None):
        super().__init__()
        self.logged = logged or {}
        self.start_step, self.loss_before, self.tokens_before = 0, 0.0, 0
        self.seconds_before, self.segment_start = 0.0, time.time()

    def state(self) -> dict:
        # not restored by the Trainer (restore_callback_states_from_checkpoint stays off): read back in on_train_begin
        return {"args": {}, "attributes": {"train_seconds": self.seconds_before + time.time() - self.segment_start}}

    def setup(self, args, state, model):
        self._async_log = False  # each step's metrics are stored before the step is counted as logged
        if state.is_world_process_zero and self._ml_flow.active_run() is not None and getattr(model, "config", None):
            self._ml_flow.log_dict(model.config.to_dict(), "config.json")
        self._initialized = True

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        super().on_train_begin(args, state, control, model=model, **kwargs)
        # a resumed state holds the killed attempt's logs up to its checkpoint (on a logging step: sft_config)
        self.start_step, previous = state.global_step, 0
        saved = state.stateful_callbacks.get(type(self).__name__) or {}
        self.seconds_before = (saved[-1] if isinstance(saved, list) else saved).get("attributes", {}).get("train_seconds", 0.0) \
            if self.start_step else 0.0
        self.segment_start = time.time()
        for entry in (e for e in state.log_history if "loss" in e and e["step"] <= state.global_step):
            self.loss_before += entry["loss"] * (entry["step"] - previous)
            previous = entry["step"]
            self.tokens_before = entry.get("num_tokens", self.tokens_before)

    def on_log(self, args, state, control, logs, model=None, **kwargs):
        if self.start_step:
            if "num_tokens" in logs:
                logs["num_tokens"] += self.tokens_before
            if "train_loss" in logs:
                logs["train_loss"] = (logs["train_loss"] * (state.global_step - self.start_step) + self.loss_before) \
                    / max(state.global_step, 1)
            if "train_runtime" in logs and self.seconds_before:
                segment, whole = logs["train_runtime"], logs["train_runtime"] + self.seconds_before
                share = state.global_step / max(state.global_step - self.start_step, 1)  # whole run's work / this call's
                logs["train_runtime"] = round(whole, 4)
                for rate in ("train_samples_per_second", "train_steps_per_second"):
                    if rate in logs:
                        logs[rate] = round(logs[rate] * segment / whole * share, 3)
        new = {key: value for key, value in logs.items() if state.global_step > self.logged.get(key, -1)}
        if new:
            super().on_log(args, state, control, new, model=model, **kwargs)
