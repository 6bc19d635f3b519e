"""The paper's NLP benchmarks with lm-evaluation-harness, their documents from the Hub, local release files
or the project's fixtures.

Each benchmark (tasks/benchmarks.yaml) is lm-eval's own task or group. With the `hub` source it is loaded as lm-eval
ships it; with `local` and `fixture` its leaf tasks keep every key of their official configs except where the
documents come from: the release's files, read by `local_docs` into the rows of the hub dataset the task expects.
Either way only the shots are set, to the paper's. lm_eval, torch and transformers are imported inside the
functions: the CLI imports this module.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import NonNegativeInt, field_validator

from sightbeyond.io import ConfigError, Strict, validated
from sightbeyond.tasks.lm_eval_index import leaves, official_config, set_config

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Source = Literal["hub", "local", "fixture"]

_BENCHMARKS_FILE = Path(__file__).parent / "benchmarks.yaml"
# the split keys of an lm-eval task config
_SPLITS = ("training_split", "validation_split", "test_split", "fewshot_split")
# lm-eval's default seeds (simple_evaluate's), pinned
SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}


class Release(Strict):
    reader: str               # a key of local_docs.READERS
    files: dict[str, str]     # split -> path under the data root


class Benchmark(Strict):
    name: str
    task: str                 # lm-eval's task or group
    folder: str               # of its official configs, under lm_eval/tasks
    num_fewshot: NonNegativeInt = 0
    prefix: str               # of our metric names
    metrics: dict[str, str]   # ours -> lm-eval's "<metric>,<filter>"
    local: Release
    documents: str            # the document set it asks; benchmarks that share one ask the same documents

    @field_validator("local")
    @classmethod
    def _known_reader(cls, local: Release) -> Release:
        from sightbeyond.tasks.local_docs import READERS

        if local.reader not in READERS:
            raise ValueError(f"reader {local.reader!r} is not one of local_docs' {', '.join(READERS)}")
        return local


class _BenchmarksFile(Strict):
    benchmarks: dict[str, Benchmark]
    means: dict[str, list[str]]  # an averaged metric -> the metrics it averages


@functools.cache
def _definitions() -> _BenchmarksFile:
    """benchmarks.yaml, validated as params.yaml is: an unknown key, a missing one or an unknown reader fails here."""
    raw = yaml.safe_load(_BENCHMARKS_FILE.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("benchmarks"), dict):
        raise ConfigError(f"{_BENCHMARKS_FILE}: invalid: expected `benchmarks:`, a mapping of names to entries")
    for name, entry in raw["benchmarks"].items():  # `prefix` and `documents` default to the entry's name
        if not isinstance(entry, dict):
            raise ConfigError(f"{_BENCHMARKS_FILE}: invalid: benchmarks.{name}: expected a mapping, got {entry!r}")
        entry.update(name=name, prefix=entry.get("prefix", name), documents=entry.get("documents", name))
    defined = validated(_BenchmarksFile, raw, _BENCHMARKS_FILE, "invalid")
    known = {f"{b.prefix}/{metric}" for b in defined.benchmarks.values() for metric in b.metrics}
    for mean, parts in defined.means.items():
        if unknown := set(parts) - known:
            raise ConfigError(f"{_BENCHMARKS_FILE}: means.{mean}: no benchmark gives {sorted(unknown)}")
    return defined


def benchmarks() -> dict[str, Benchmark]:
    return _definitions().benchmarks


def means() -> dict[str, list[str]]:
    """Averaged metrics (e.g. `ethics/acc`) and the metrics they average."""
    return _definitions().means


def select(names: Iterable[str]) -> list[Benchmark]:
    known = benchmarks()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown NLP benchmark {unknown[0]!r}; known: {', '.join(known)}")
    return [known[n] for n in names]


def metric_names(names: Iterable[str]) -> set[str]:
    """Our names of the metrics the benchmarks `names` give (standard errors aside)."""
    names = {f"{b.prefix}/{metric}" for b in select(names) for metric in b.metrics}
    return names | {mean for mean, parts in means().items() if set(parts) <= names}


@dataclass
class NLPResult:
    metrics: dict[str, float]
    raw: dict[str, Any] = field(repr=False)  # lm-eval's results without the samples, JSON-serialisable
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)  # per task, per document


def task_manager(names: Iterable[str], source: Source, data_root: Path | None) -> TaskManager:
    """lm-eval's TaskManager over the official configs, the leaf tasks of `names` set to the paper's shots and, for
    the local sources, to the release files under `data_root`. Every file is read (and checked) when its task is
    built; a missing one raises FileNotFoundError naming the benchmark and the file."""
    benches = select(names)
    manager = official_task_manager(benches)
    index = manager.task_index
    for bench in benches:
        for leaf in leaves(index, bench.task):
            config = official_config(index, leaf) | {"num_fewshot": bench.num_fewshot}
            if source != "hub":
                config = _local(bench, config, Path(data_root))
            set_config(index, leaf, config)
    return manager


def _leaf_files(names: Iterable[str], data_root: Path) -> Iterator[tuple[Benchmark, str | None, dict[str, Path]]]:
    """(benchmark, subtask's hub configuration, its release files per split) for every leaf task of `names`."""
    benches = select(names)
    index = official_task_manager(benches).task_index
    for bench in benches:
        for leaf in leaves(index, bench.task):
            subset = official_config(index, leaf, resolve_functions=False).get("dataset_name")
            yield bench, subset, {split: release_file(bench, Path(data_root) / rel.format(dataset_name=subset))
                                  for split, rel in bench.local.files.items()}


def data_files(names: Iterable[str], data_root: Path) -> list[Path]:
    """The release files the benchmarks `names` read under `data_root` (the local sources)."""
    return sorted({path for _, _, files in _leaf_files(names, data_root) for path in files.values()})


def check_files(names: Iterable[str], source: Source, data_root: Path | None) -> None:
    """Read every release file the benchmarks `names` need, as their tasks will: a missing or malformed one fails
    here, in seconds, instead of after a model has loaded (minutes at 7B)."""
    from sightbeyond.tasks.local_docs import read

    if source == "hub":
        return
    for bench, subset, files in _leaf_files(names, Path(data_root)):
        read(bench.local.reader, files, subset)


def data_hash(names: Iterable[str], source: Source, data_root: Path | None) -> str:
    """What documents an evaluation read: the content of its release files (the local sources), or `hub`."""
    import hashlib

    if source == "hub":
        return "hub"
    digest = hashlib.sha256()
    for path in data_files(names, Path(data_root)):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _local(bench: Benchmark, config: dict[str, Any], data_root: Path) -> dict[str, Any]:
    from sightbeyond.tasks.local_docs import read

    subset = config.get("dataset_name")
    files = {split: release_file(bench, data_root / rel.format(dataset_name=subset)) for split, rel in bench.local.files.items()}
    load = functools.partial(read, bench.local.reader, files, subset)
    if "class" in config:
        from sightbeyond.tasks.squad_v2 import local_squad2

        # SQuAD2, lm-eval's one Python task here, builds its own config: the class itself reads the files
        return config | {"class": local_squad2(config["class"], load)}
    return config | {
        "dataset_path": str(data_root),
        "dataset_kwargs": None,
        "custom_dataset": load,
        **{key: None for key in _SPLITS if config.get(key) and config[key] not in files},
    }


def release_file(bench: Benchmark, path: Path) -> Path:
    """The release's file, or a sample of it in the same layout named `<name>.sample<suffix>` (the real samples in
    ../shared/data) where the release itself is not there."""
    sample = path.with_name(f"{path.stem}.sample{path.suffix}")
    for candidate in (path, sample):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{bench.name}: data file not found: {path} (nor a sample of it, {sample.name})")


def load_tasks(names: Iterable[str], source: Source, data_root: Path | None) -> dict[str, Any]:
    """lm-eval's task objects ({"tasks", "groups", "group_map"}), built once for repeated (step-wise) evaluation,
    with the shots simple_evaluate would give them."""
    names = list(names)
    with quiet():
        loaded = task_manager(names, source, data_root).load([b.task for b in select(names)])
    for task in loaded["tasks"].values():
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
    return loaded


def reseed_fewshot(tasks: dict[str, Any]) -> None:
    """Before every build of the requests: the few-shot sampler continues its random stream from one build to the
    next, so tasks evaluated again would draw other shots (MathQA's, GSM8K's)."""
    for task in tasks["tasks"].values():
        task.set_fewshot_seed(seed=SEEDS["fewshot_random_seed"])


def fixed_subsample(tasks: dict[str, Any], limit: int | None,
                    kept_out: dict[str, list[int]] | None = None) -> dict[str, list[int]] | None:
    """The same `limit` documents of every task each time: a seeded draw over the whole task rather than its first
    documents, which in ETHICS are a few scenarios' variants; never one of `kept_out`'s (a selection holdout)."""
    if limit is None and not kept_out:
        return None
    out = {}
    for name, task in tasks["tasks"].items():
        pool = sorted(set(range(len(task.eval_docs))) - set((kept_out or {}).get(name, ())))
        out[name] = pool if limit is None else sorted(random.Random(name).sample(pool, min(limit, len(pool))))
    return out


def holdout(names: Iterable[str], tasks: dict[str, Any], fraction: float | None,
            among: Iterable[str] | None = None) -> dict[str, list[int]]:
    """A seeded share of the documents of each loaded leaf task of the benchmarks `names`, to choose a checkpoint on
    and keep out of every reported score; drawn alike for benchmarks that ask the same documents (benchmarks.yaml's
    `documents`: TruthfulQA mc1, mc2 and gen). `among`: only the documents those benchmarks ask (the step-wise ones)."""
    if not fraction:
        return {}
    keys = _document_sets(names)
    allowed = None if among is None else set(_document_sets(among).values())
    return {leaf: sorted(random.Random(f"holdout:{key}").sample(range(n := len(tasks["tasks"][leaf].eval_docs)),
                                                                 round(fraction * n)))
            for leaf, key in keys.items() if leaf in tasks["tasks"] and (allowed is None or key in allowed)}


def _document_sets(names: Iterable[str]) -> dict[str, str]:
    """Each leaf task of `names` -> the document set it asks."""
    benches = select(names)
    index = official_task_manager(benches).task_index
    return {leaf: bench.documents if leaf == bench.task else f"{bench.documents}/{leaf}"
            for bench in benches for leaf in leaves(index, bench.task)}


def evaluate_llm(
    model: str | Path | PreTrainedModel,
    tokenizer: str | PreTrainedTokenizerBase | None,
    task_names: Iterable[str],
    source: Source,
    data_root: Path | None,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    log_samples: bool = False,
    dtype: str = "float32",
    add_bos_token: bool | None = None,
    samples: dict[str, list[int]] | None = None,
) -> NLPResult:
    """lm-eval's simple_evaluate of a causal LM on `task_names`, its loglikelihood requests scored with their shared
    contexts computed once (`SharedPrefixLM`: HFLM's results, several times faster on TruthfulQA).

    `model` is a local model directory, loaded in `dtype` (never HFLM's "auto", which would evaluate a hub base in its
    stored float16 and a tuned LLM in float32), or a loaded model, which is evaluated in place: its train/eval
    mode and the global RNG states are restored after. `add_bos_token`: None keeps the tokenizer's own (lm-eval
    0.4.13 adds LLaMA's BOS; the 2023 harness the paper used did not: False). `samples`: the documents to evaluate
    per leaf task (lm-eval's; every document of a task it leaves out).
    """
    import lm_eval
    import torch

    from sightbeyond.tasks.stepwise_eval import SharedPrefixLM

    task_names = list(task_names)
    is_path = isinstance(model, (str, Path))
    was_training = not is_path and model.training
    with quiet(), _preserved_rng_states():
        manager = task_manager(task_names, source, data_root)
        try:
            if is_path:
                device = "cuda" if torch.cuda.is_available() else "cpu"
                lm = SharedPrefixLM(pretrained=str(model), tokenizer=tokenizer, batch_size=batch_size, device=device,
                                    dtype=dtype, add_bos_token=add_bos_token)
            else:
                lm = SharedPrefixLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                                    add_bos_token=add_bos_token)
            results = lm_eval.simple_evaluate(model=lm, tasks=[b.task for b in select(task_names)], task_manager=manager,
                                              limit=limit, samples=samples, log_samples=log_samples, **SEEDS)
        finally:
            if was_training:  # HFLM switches the model to eval mode
                model.train()
    return _result(results)


def evaluate_loaded(lm, tasks: dict[str, Any], *, samples: dict[str, list[int]] | None = None,
                    log_samples: bool = False) -> NLPResult:
    """lm-eval's `evaluate` of an lm-eval model (e.g. an `HFLM` over the model being trained) on tasks from
    `load_tasks`, on the documents `samples` names per task (all by default). No standard errors."""
    from lm_eval.evaluator import evaluate

    reseed_fewshot(tasks)
    with quiet(), _preserved_rng_states():
        results = evaluate(lm=lm, task_dict=tasks, samples=samples, bootstrap_iters=0, log_samples=log_samples,
                           verbosity="WARNING")
    return _result(results)


def _result(results: dict[str, Any]) -> NLPResult:
    from lm_eval.utils import handle_non_serializable

    # lm-eval's configs hold callables and numpy scalars; its own writer stringifies them the same way.
    raw = json.loads(json.dumps(results, default=handle_non_serializable))
    samples = raw.pop("samples", {})
    return NLPResult(metrics=metrics_from_results(raw["results"]), raw=raw, samples=samples)


def metrics_from_results(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Our metric names for lm-eval's results (task or group -> {"<metric>,<filter>": value})."""
    benches, averaged = benchmarks(), means()
    metrics: dict[str, float] = {}
    for bench in benches.values():
        if bench.task not in results:
            continue
        for ours, theirs in bench.metrics.items():
            metrics[f"{bench.prefix}/{ours}"] = float(results[bench.task][theirs])
            # lm-eval reports "N/A" where it has no stderr (e.g. a single document, or no bootstrap)
            metric, _, filter_ = theirs.partition(",")
            stderr = results[bench.task].get(f"{metric}_stderr,{filter_}")
            if isinstance(stderr, (int, float)) and math.isfinite(stderr):
                metrics[f"{bench.prefix}/{ours}_stderr"] = float(stderr)
    for name, parts in averaged.items():
        if all(p in metrics for p in parts):
            metrics[name] = sum(metrics[p] for p in parts) / len(parts)
    return metrics


def official_task_manager(benches: Iterable[Benchmark] | None = None) -> TaskManager:
    """lm-eval's TaskManager over the official configs of `benches` (default: all): indexing only their folders takes
    a fraction of a second where indexing every task lm-eval ships takes many."""
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    folders = dict.fromkeys(b.folder for b in (benchmarks().values() if benches is None else benches))
    with quiet():
        return lm_eval.tasks.TaskManager(include_defaults=False, include_path=[root / f for f in folders])


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    # lm-eval's INFO lines and the datasets loader's bars, several per task, bury the progress bars that matter
    # (the model's requests). Its task modules only warn, here, about defaults the official configs leave implicit
    # (aggregation, higher_is_better, generation_kwargs), about custom datasets (how local documents reach a task)
    # and about two of its folders tagging tasks `math_word_problems`; HFLM, about being handed a loaded model and,
    # once per request, about the left truncation that is part of the task's definition.
    import datasets

    levels = {"lm_eval": logging.WARNING, "lm_eval.api.task": logging.ERROR, "lm_eval.config.task": logging.ERROR,
              "lm_eval.tasks._index": logging.ERROR, "lm_eval.models.huggingface": logging.ERROR}
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
