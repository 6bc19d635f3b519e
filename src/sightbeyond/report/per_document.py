"""Per-document results, read back from the artifacts the evaluation runs log.

eval_nlp: lm-eval's per-sample records, whose field named after each metric (`acc`, `bleu_acc`, `exact_match`) is
the document's result: from JSON-lines artifacts (`predictions/<task>.jsonl`, as `nlp_stage` logs them) or JSON ones
with "sample" in their path (keyed by task, a list, or an MLflow table), the task taken from a record's `task` or
else the file's name; runs from before those logged them in the `samples` of `lm_eval_results.json`. eval_mm: the
prediction tables each benchmark's module in `sightbeyond.tasks` logs.

Documents are trusted only if they reproduce the logged metric: a reader that does not (another lm-eval version,
a truncated table) gives None, and the report shows no interval rather than one about some other number.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import tempfile
import warnings
from pathlib import Path, PurePosixPath

import numpy as np

from sightbeyond.report.stats import Docs, mean, mean_of_strata, pooled


def read(run_id: str, metric: str, logged: float) -> Docs | None:
    for pattern, artifact, reader in _READERS:
        if m := re.fullmatch(pattern, metric):
            if artifact is None:
                docs = reader(run_id, metric)
            else:
                table = _load(run_id, artifact.format(*m.groups()))
                docs = None if table is None else reader(_records(table), *m.groups())
            break
    else:
        return None
    if docs is None or not len(docs.keys):
        return None
    if not math.isclose(docs.score(), logged, rel_tol=1e-6, abs_tol=1e-9):
        warnings.warn(f"run {run_id}: {metric}: its per-document results give {docs.score():.6g}, the run logged "
                      f"{logged:.6g}; no interval", stacklevel=2)
        return None
    return docs


def _docs(keys: list, values: list, strata: list[int] | None = None, statistic=mean) -> Docs:
    return Docs(np.array(keys, dtype=object), np.array(values, dtype=float),
                np.array(strata if strata is not None else [0] * len(keys)), statistic)


@functools.cache
def _artifacts(run_id: str) -> tuple[str, ...]:
    from mlflow import MlflowClient

    client, found, todo = MlflowClient(), [], [None]
    while todo:
        for info in client.list_artifacts(run_id, todo.pop()):
            (todo if info.is_dir else found).append(info.path)
    return tuple(found)


@functools.cache
def _load(run_id: str, path: str):
    """The artifact parsed (JSON, or JSON lines as a list), None if the run has no such file."""
    import mlflow

    if path not in _artifacts(run_id):
        return None
    # a progress bar per small JSON file would bury the report's own output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)).read_text()
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def _records(obj) -> list[dict]:
    if isinstance(obj, dict) and {"columns", "data"} <= obj.keys():  # mlflow.log_table's layout
        return [dict(zip(obj["columns"], row)) for row in obj["data"]]
    return obj if isinstance(obj, list) else []


@functools.cache
def _lm_eval_samples(run_id: str) -> dict[str, list[dict]]:
    samples: dict[str, list[dict]] = {}
    for path in _artifacts(run_id):
        if not (path.endswith(".jsonl") or (path.endswith(".json") and "sample" in path)):
            continue
        obj = _load(run_id, path)
        if isinstance(obj, dict) and not {"columns", "data"} <= obj.keys():
            for task, records in obj.items():
                samples.setdefault(task, []).extend(_records(records))
            continue
        stem_task = re.sub(r"(^|_)samples?(_|$)", "", PurePosixPath(path).stem)
        for record in _records(obj):
            samples.setdefault(record.get("task", stem_task), []).append(record)
    if not samples:
        samples = (_load(run_id, "lm_eval_results.json") or {}).get("samples") or {}
    return samples


def _leaf_tasks(run_id: str, task: str, samples: dict) -> list[str]:
    if task in samples:
        return [task]
    groups = (_load(run_id, "lm_eval_results.json") or {}).get("group_subtasks", {})
    return [leaf for sub in groups.get(task, []) for leaf in _leaf_tasks(run_id, sub, samples)]


def _nlp(run_id: str, metric: str) -> Docs | None:
    from sightbeyond.tasks import nlp

    by_prefix = {b.prefix: b for b in nlp.benchmarks().values()}
    parts = nlp.means().get(metric, [metric])
    samples = _lm_eval_samples(run_id)
    keys, values, strata = [], [], []
    for stratum, part in enumerate(parts):
        prefix, _, name = part.partition("/")
        bench = by_prefix.get(prefix)
        if bench is None or name not in bench.metrics:
            return None
        field, _, filter_ = bench.metrics[name].partition(",")
        leaves = _leaf_tasks(run_id, bench.task, samples)
        if not leaves:
            return None
        for leaf in leaves:
            for record in samples[leaf]:
                if record.get("filter", "none") != filter_:
                    continue
                value = record.get(field)
                if isinstance(value, str):  # tables logged through pandas may hold numbers as text
                    try:
                        value = float(value)
                    except ValueError:
                        return None
                if not isinstance(value, (int, float)) or "doc_id" not in record:  # e.g. SQuAD's corpus-level F1
                    return None
                keys.append(f"{leaf}:{record['doc_id']}")
                values.append(value)
                strata.append(stratum)
    return _docs(keys, values, strata, mean_of_strata if len(parts) > 1 else mean)


def _pope(rows: list[dict], split: str) -> Docs:
    from sightbeyond.tasks.pope import parse_answer

    per_image: dict[str, list[int]] = {}  # POPE asks six questions of each image: the image is what is resampled
    for r in rows:
        counts = per_image.setdefault(r["image"], [0, 0])
        counts[0] += (r.get("parsed") or parse_answer(r["answer"])) == r["label"]
        counts[1] += 1
    return _docs(list(per_image), list(per_image.values()), statistic=pooled)


def mme_score(values: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """MME's sum over subtasks of 100 (acc + acc+), from per-image (share of its questions right, all right)."""
    return sum(100 * values[:, strata == s].mean(axis=1).sum(axis=-1) for s in np.unique(strata))


def _mme(rows: list[dict], which: str) -> Docs:
    from sightbeyond.tasks.mme import COGNITION, PERCEPTION

    subtasks = {"perception": PERCEPTION, "cognition": COGNITION}.get(which, (which,))
    images: dict[tuple[str, str], list[bool]] = {}
    for r in rows:
        if r["subtask"] in subtasks:
            images.setdefault((r["subtask"], r["image"]), []).append(bool(r["correct"]))
    names = sorted({subtask for subtask, _ in images})
    return _docs([f"{s}:{i}" for s, i in images], [(np.mean(c), all(c)) for c in images.values()],
                 [names.index(s) for s, _ in images], mme_score)


def _captions(rows: list[dict], name: str) -> Docs:
    # CIDEr's document frequencies come from the whole test set; resampling images keeps each one's score fixed,
    # the usual approximation (pycocoevalcap's corpus score is the mean of these)
    return _docs([r["image"] for r in rows], [r["cider"] for r in rows])


def _coco_c(rows: list[dict]) -> Docs:
    per_image: dict[str, list[float]] = {}
    for r in rows:  # every image has every corruption x severity, so the mean of images' means is the mean of cells
        per_image.setdefault(r["image"], []).append(r["cider"])
    return _docs(list(per_image), [np.mean(v) for v in per_image.values()])


def _oodcv(rows: list[dict]) -> Docs:
    last = {r["image"]: bool(r["correct"]) for r in rows}  # the official scorer keeps each image's last question
    return _docs(list(last), list(last.values()))


def _sketch(rows: list[dict]) -> Docs:
    parsed = [r for r in rows if r["parsed"] != "unparsed"]  # the official accuracy is over parsed answers only
    return _docs([f"{r['image']}:{r['question']}" for r in parsed], [r["parsed"] == r["label"].lower() for r in parsed])


def _reliance(rows: list[dict], which: str) -> Docs:
    """Per held-out record: its loss under one condition, or the gap (deranged minus right)."""
    values = [r["loss_deranged"] - r["loss_right"] if which == "gap" else r[which] for r in rows]
    return _docs([r["id"] for r in rows], values)


# (metric, the prediction table it is read from (None: lm-eval's samples), reader)
_READERS = (
    (r"reliance/(gap|loss_right|loss_deranged|loss_blank)", "reliance.json", _reliance),
    (r"pope_(\w+)/acc", "pope_{}_predictions.json", _pope),
    (r"mme/(\w+)", "mme_predictions.json", _mme),
    (r"(coco|flickr30k)/cider", "{}_predictions.json", _captions),
    (r"coco_c/cider", "coco_c_predictions.json", _coco_c),
    (r"unicorn_oodcv/acc", "unicorn_oodcv_predictions.json", _oodcv),
    (r"unicorn_sketch/acc", "unicorn_sketch_predictions.json", _sketch),
    (r"\w+/\w+", None, _nlp),
)
