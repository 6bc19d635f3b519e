"""TruthfulQA-mc1 and ETHICS with lm-evaluation-harness, read from local files in the official raw layouts.

Each task is lm-eval's own official config with only its data source replaced: the YAML of the
same name in `tasks/` says which file to read and how to turn its rows into the hub schema the
official prompt expects, and is merged over the official config here. lm_eval, torch and
transformers are imported inside the functions: the CLI imports this module.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TASKS = ("truthfulqa_mc1", "ethics_cm", "ethics_deontology", "ethics_justice", "ethics_utilitarianism", "ethics_virtue")

# lm-eval task -> the prefix of our metric names
_METRIC_PREFIX = {
    "truthfulqa_mc1": "truthfulqa_mc1",
    "ethics_cm": "ethics_commonsense",
    "ethics_deontology": "ethics_deontology",
    "ethics_justice": "ethics_justice",
    "ethics_utilitarianism": "ethics_utilitarianism",
    "ethics_virtue": "ethics_virtue",
}

# Columns the conversions in tasks/local_docs.py read (headerless files name theirs in the YAML).
_RAW_COLUMNS = {
    "truthfulqa_mc1": ("Question", "Best Answer", "Correct Answers", "Incorrect Answers"),
    "ethics_cm": ("label", "input", "is_short", "edited"),
    "ethics_deontology": ("label", "scenario", "excuse"),
    "ethics_justice": ("label", "scenario"),
    "ethics_virtue": ("label", "scenario"),
}

_OVERRIDES_DIR = Path(__file__).parent / "tasks"
# lm-eval's folders holding the official configs; indexing only these takes milliseconds where
# indexing every task lm-eval ships takes seconds.
_OFFICIAL_DIRS = ("truthfulqa", "hendrycks_ethics")


@dataclass
class NLPResult:
    metrics: dict[str, float]
    raw: dict[str, Any] = field(repr=False)  # lm-eval's results, JSON-serialisable


def local_task_configs(task_names: Iterable[str], data_root: Path) -> list[dict[str, Any]]:
    """The official lm-eval configs of `task_names`, reading the raw files under `data_root`.

    Every file is checked before lm-eval sees it: a missing one raises FileNotFoundError, a
    malformed one ValueError naming the file, the row and the reason.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    index = _official_task_manager().task_index
    configs = []
    for name in task_names:
        if name not in TASKS:
            raise ValueError(f"unknown NLP task {name!r}; known: {', '.join(TASKS)}")
        override = load_yaml(_OVERRIDES_DIR / f"{name}.yaml", resolve_func=True)
        kwargs = override["dataset_kwargs"]
        data_files = {split: Path(data_root) / rel for split, rel in kwargs["data_files"].items()}
        for path in data_files.values():
            _check_raw_file(name, path, kwargs)
        config = load_yaml(index[name].yaml_path, resolve_func=True) | override
        config["dataset_kwargs"] = kwargs | {"data_files": {s: str(p) for s, p in data_files.items()}}
        configs.append(config)
    return configs


def evaluate_llm(
    model: str | Path | PreTrainedModel,
    tokenizer: str | PreTrainedTokenizerBase | None,
    task_names: Iterable[str],
    data_root: Path,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    log_samples: bool = False,
) -> NLPResult:
    """0-shot lm-eval of a causal LM on local copies of `task_names`.

    `model` is a local model directory or a loaded model, which is evaluated in place (step-wise
    evaluation during training): its train/eval mode and the global RNG states are restored after.
    """
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import handle_non_serializable

    configs = local_task_configs(task_names, data_root)
    is_path = isinstance(model, (str, Path))
    was_training = not is_path and model.training
    with _quiet(), _preserved_rng_states():
        try:
            if is_path:
                device = "cuda" if torch.cuda.is_available() else "cpu"
                lm = HFLM(pretrained=str(model), tokenizer=tokenizer, batch_size=batch_size, device=device)
            else:
                lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=configs,
                task_manager=_official_task_manager(),
                limit=limit,
                log_samples=log_samples,
                # lm-eval's defaults, pinned
                random_seed=0,
                numpy_random_seed=1234,
                torch_random_seed=1234,
                fewshot_random_seed=1234,
            )
        finally:
            if was_training:  # HFLM switches the model to eval mode
                model.train()
    # lm-eval's configs hold callables and numpy scalars; its own writer stringifies them the same way.
    raw = json.loads(json.dumps(results, default=handle_non_serializable))
    return NLPResult(metrics=_metrics(raw["results"]), raw=raw)


def load_tasks(task_names: Iterable[str], data_root: Path) -> dict[str, Any]:
    """lm-eval's task objects for the local configs, built once for repeated (step-wise) evaluation."""
    return _official_task_manager().load(local_task_configs(task_names, data_root))


def evaluate_loaded(lm, tasks: dict[str, Any], *, limit: int | None = None) -> dict[str, float]:
    """Accuracies of an lm-eval model (e.g. an `HFLM` over the model being trained) on tasks from `load_tasks`.

    lm-eval's lower-level `evaluate`: tasks are not rebuilt and no environment report is collected each time,
    which is most of `simple_evaluate`'s cost on a small model. No stderr (`bootstrap_iters=0`).
    """
    from lm_eval.evaluator import evaluate

    with _quiet(), _preserved_rng_states():
        results = evaluate(lm=lm, task_dict=tasks, limit=limit, bootstrap_iters=0, log_samples=False, verbosity="WARNING")
    return _metrics(results["results"])


def _metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for task, prefix in _METRIC_PREFIX.items():
        if task not in results:
            continue
        metrics[f"{prefix}/acc"] = float(results[task]["acc,none"])
        # lm-eval reports "N/A" where it has no stderr (e.g. a single document).
        stderr = results[task].get("acc_stderr,none")
        if isinstance(stderr, (int, float)) and math.isfinite(stderr):
            metrics[f"{prefix}/acc_stderr"] = float(stderr)
    ethics = [v for k, v in metrics.items() if k.startswith("ethics_") and k.endswith("/acc")]
    if ethics:
        metrics["ethics/acc"] = sum(ethics) / len(ethics)
    return metrics


def _official_task_manager() -> TaskManager:
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    return lm_eval.tasks.TaskManager(include_defaults=False, include_path=[root / d for d in _OFFICIAL_DIRS])


def _check_raw_file(task: str, path: Path, dataset_kwargs: dict[str, Any]) -> None:
    """Reads `path` as the official layout, as lm-eval would read it, and fails on the first bad row.

    Rows are numbered as a spreadsheet shows them: the header, if any, is row 1.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{task}: data file not found: {path}")
    with path.open(encoding=dataset_kwargs.get("encoding", "utf-8"), newline="") as f:
        # Blank lines are skipped, as pandas (the datasets csv loader) does.
        rows = ((n, row) for n, row in enumerate(csv.reader(f), start=1) if row)
        header = dataset_kwargs.get("column_names")
        if header is None:
            n, header = next(rows, (1, None))
            if header is None:
                raise ValueError(f"{path}: empty file")
            missing = [c for c in _RAW_COLUMNS[task] if c not in header]
            if missing:
                raise ValueError(f"{path}: row {n}: missing column {missing[0]!r} (header: {header})")
        count = 0
        for n, row in rows:
            count += 1
            if len(row) != len(header):
                raise ValueError(f"{path}: row {n}: {len(row)} columns, expected {len(header)} ({header})")
            record = dict(zip(header, row))
            if "label" in record and record["label"] not in ("0", "1"):
                raise ValueError(f"{path}: row {n}: label must be 0 or 1, got {record['label']!r}")
            if task == "ethics_virtue" and record["scenario"].count(" [SEP] ") != 1:
                raise ValueError(f"{path}: row {n}: scenario must be '<sentence> [SEP] <trait>'")
            if task == "truthfulqa_mc1":
                empty = [c for c in _RAW_COLUMNS[task] if not record[c].strip()]
                if empty:
                    raise ValueError(f"{path}: row {n}: empty {empty[0]!r}")
        if count == 0:
            raise ValueError(f"{path}: no data rows")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # lm-eval's INFO lines and the datasets loader's bars, several per task, bury the one progress
    # bar that matters (the loglikelihood requests). lm_eval.api.task only warns, here, about the
    # defaults the official ETHICS configs leave implicit (aggregation, higher_is_better).
    import datasets

    levels = {"lm_eval": logging.WARNING, "lm_eval.api.task": logging.ERROR}
    loggers = {name: logging.getLogger(name) for name in levels}
    before = {name: logger.level for name, logger in loggers.items()}
    bars = datasets.is_progress_bar_enabled()
    for name, logger in loggers.items():
        logger.setLevel(max(logger.getEffectiveLevel(), levels[name]))
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(before[name])
        if bars:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def _preserved_rng_states() -> Iterator[None]:
    # simple_evaluate seeds the global RNGs; a training run evaluated step-wise must not be reseeded.
    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
