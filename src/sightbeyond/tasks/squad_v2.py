"""SQuAD v2's official scores, computed here: lm-eval's `squadv2` fetches the scoring script from the Hugging Face Hub
(`evaluate.load("squad_v2")`) when it aggregates, which the `local` and `fixture` sources must not need.

The definitions are those of the official evaluation script (SQuAD-explorer's evaluate-v2.0.py) as the `evaluate`
metric calls it: answers and predictions normalised (lower case, no punctuation, no articles, single spaces); per
question the best exact match and token F1 over the gold answers, an unanswerable question counting as answered
right only by an empty prediction; a question whose no-answer probability exceeds the threshold (1.0) counts as
answered empty; and the best scores over all no-answer thresholds.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

NO_ANSWER_THRESHOLD = 1.0
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact(gold: str, prediction: str) -> int:
    return int(normalize(gold) == normalize(prediction))


def f1(gold: str, prediction: str) -> float:
    gold_tokens, predicted = normalize(gold).split(), normalize(prediction).split()
    if not gold_tokens or not predicted:
        return float(gold_tokens == predicted)
    same = sum((Counter(gold_tokens) & Counter(predicted)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def scores(predictions: list[dict[str, Any]], references: list[dict[str, Any]]) -> dict[str, float]:
    """What `evaluate.load("squad_v2").compute(predictions=..., references=...)` returns, for lm-eval's items:
    predictions {"id", "prediction_text", "no_answer_probability"}, references {"id", "answers": {"text": [...]}}."""
    import numpy as np

    text = {p["id"]: p["prediction_text"] for p in predictions}
    # `evaluate` stores the probabilities as float32 before scoring
    no_answer = {p["id"]: float(np.float32(p["no_answer_probability"])) for p in predictions}
    golds = {r["id"]: [a for a in r["answers"]["text"] if normalize(a)] or [""] for r in references}
    has_answer = {r["id"]: bool(r["answers"]["text"]) for r in references}
    raw = {name: {qid: max(score(g, text[qid]) for g in gold) for qid, gold in golds.items()}
           for name, score in (("exact", exact), ("f1", f1))}
    thresholded = {name: {qid: float(not has_answer[qid]) if no_answer[qid] > NO_ANSWER_THRESHOLD else s
                          for qid, s in per_qid.items()} for name, per_qid in raw.items()}
    out: dict[str, float] = {}
    for prefix, qids in (("", list(golds)), ("HasAns_", [q for q in golds if has_answer[q]]),
                         ("NoAns_", [q for q in golds if not has_answer[q]])):
        if qids:
            for name, per_qid in thresholded.items():
                out[prefix + name] = 100.0 * sum(per_qid[q] for q in qids) / len(qids)
            out[prefix + "total"] = len(qids)
    for name, per_qid in raw.items():
        out[f"best_{name}"], out[f"best_{name}_thresh"] = _best_threshold(per_qid, text, no_answer, has_answer)
    return out


def _best_threshold(per_qid: dict[str, float], text: dict[str, str], no_answer: dict[str, float],
                    has_answer: dict[str, bool]) -> tuple[float, float]:
    # Answer empty above the threshold: start with every question unanswered, then lower the threshold question
    # by question, in order of no-answer probability.
    score = best = sum(not h for h in has_answer.values())
    threshold = 0.0
    for qid in sorted(no_answer, key=no_answer.get):
        score += per_qid[qid] if has_answer[qid] else -1 if text[qid] else 0
        if score > best:
            best, threshold = score, no_answer[qid]
    return 100.0 * best / len(per_qid), threshold


def local_squad2(base: type, load: Callable[[], Any]) -> type:
    """lm-eval's SQuAD2 task class `base`, its documents from `load` and its aggregation (per key of `scores`,
    from the per-document (prediction, reference) items) computed here rather than by the downloaded script."""

    class LocalSQuAD2(base):
        def download(self, *args, **kwargs) -> None:
            self.dataset = load()

        def aggregation(self) -> dict[str, Callable[[list], float]]:
            return {key: partial(_aggregate, key) for key in super().aggregation()}

    return LocalSQuAD2


def _aggregate(key: str, items: list[tuple[dict[str, Any], dict[str, Any]]]) -> float:
    predictions, references = zip(*items)
    return scores(list(predictions), list(references)).get(key, 0)
