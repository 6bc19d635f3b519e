"""POPE's official answer parsing and metrics (Li et al., 2023, `evaluate.py`)."""

from __future__ import annotations

import json
from pathlib import Path

from sightbeyond.io import MalformedFile, undecodable
from sightbeyond.tasks.predictions import answers_in_order, qa_conversation
from sightbeyond.tasks.reliance import derangement


NO_WORDS = ("No", "not", "no")


def _first_sentence_words(text: str) -> list[str]:
    if "." in text:
        text = text.split(".")[0]
    return text.replace(",", "").split(" ")


def parse_answer(text: str) -> str:
    """First sentence, commas dropped; "No", "not" or "no" among its words means no, anything else yes."""
    return "no" if any(w in _first_sentence_words(text) for w in NO_WORDS) else "yes"


def readable(text: str) -> bool:
    """Whether the first sentence says yes or no at all. The official parser reads anything without a no-word as
    yes, so an answer that is neither (a caption, an empty string) counts as a yes; this tells them apart."""
    words = _first_sentence_words(text)
    return any(w in words for w in NO_WORDS) or any(w.strip("!?;:").lower() == "yes" for w in words)


def pope_metrics(labels: list[str], answers: list[str]) -> dict[str, float]:
    if len(labels) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(labels)} questions")
    preds = [parse_answer(a) == "yes" for a in answers]
    truth = [label == "yes" for label in labels]
    tp = sum(p and t for p, t in zip(preds, truth))
    fp = sum(p and not t for p, t in zip(preds, truth))
    tn = sum(not p and not t for p, t in zip(preds, truth))
    fn = sum(not p and t for p, t in zip(preds, truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "acc": (tp + tn) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(preds) / len(preds),
        "unreadable": sum(not readable(a) for a in answers) / len(answers),
    }


def score_pope(questions: list[dict], predictions: list[dict]) -> dict[str, float]:
    """POPE's questions (`question_id`, `label`) and its answer records (`question_id`, `answer`), checked in order."""
    answers = answers_in_order([q["question_id"] for q in questions], predictions, key="question_id", answer="answer",
                               what="POPE")
    return pope_metrics([q["label"] for q in questions], answers)


def read_pope(path: Path) -> list[dict]:
    rows = []
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if reason := undecodable(line):
            raise MalformedFile(path, f"line {n}", reason)
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise MalformedFile(path, f"line {n}", f"unparsable JSON ({err.msg})") from None
        if (not isinstance(row, dict) or not {"question_id", "image", "text", "label"} <= row.keys()
                or row["label"] not in ("yes", "no") or not isinstance(row["image"], str) or not isinstance(row["text"], str)):
            raise MalformedFile(path, f"line {n}", f"expected question_id, image and text and a yes/no label, got {line[:200]}")
        rows.append(row | {"_line": n})
    if not rows:
        raise MalformedFile(path, "line 1", "no questions")
    return rows


# The eval_mm stage's family (see mme.py); `cfg` is params.eval_mm.
def inputs(cfg) -> list[Path]:
    return [cfg.pope_dir, cfg.pope_images]


def read(cfg) -> tuple[dict[str, list[dict]], dict[Path, str]]:
    splits, asked = {}, {}
    for split in cfg.splits:
        file = cfg.pope_dir / f"coco_pope_{split}.json"
        splits[split] = read_pope(file)
        for row in splits[split]:
            row["path"] = cfg.pope_images / row["image"]
            asked.setdefault(row["path"], f"{file}: line {row['_line']}")
    return splits, asked


def deranged_images(paths: list[Path], seed: int) -> list[Path]:
    """Each question's image replaced by another image of the split (one fixed derangement of the images): every
    question about an image is asked of the same other image."""
    images = sorted(set(paths))
    other = dict(zip(images, (images[j] for j in derangement(len(images), seed))))
    return [other[p] for p in paths]


def auc(labels: list[str], scores: list[float]) -> float:
    """The probability that a present object scores above an absent one (ties half): ROC AUC."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([label == "yes" for label in labels], scores))


def evaluate(ask, splits: dict[str, list[dict]], cfg) -> dict[str, float]:
    """POPE's answers scored as its evaluate.py does, and the answer's first-token score logit(Yes) - logit(No), with
    the right image and with another one: its AUC against the labels is the model's ranking of present over absent
    objects, threshold aside; with the wrong image it falls to chance if, and only if, the model reads the image."""
    import mlflow

    metrics = {}
    for split, questions in splits.items():
        conversations, paths = [qa_conversation(q["text"]) for q in questions], [q["path"] for q in questions]
        answers = ask(conversations, paths, max_new_tokens=cfg.max_new_tokens, desc=f"POPE {split}")
        scores = score_pope(questions, [{"question_id": q["question_id"], "answer": a} for q, a in zip(questions, answers)])
        labels = [q["label"] for q in questions]
        right = ask.margins(conversations, paths, yes="Yes", no="No", desc=f"POPE {split} yes/no")
        scores["auc"] = auc(labels, right)
        wrong = [None] * len(questions)
        if len(set(paths)) > 1:  # one image has no other to be swapped with
            wrong = ask.margins(conversations, deranged_images(paths, cfg.seed), yes="Yes", no="No",
                                desc=f"POPE {split} yes/no, another image")
            scores["auc_deranged"] = auc(labels, wrong)
        metrics |= {f"pope_{split}/{k}": v for k, v in scores.items()}
        mlflow.log_table({"question_id": [q["question_id"] for q in questions], "image": [q["image"] for q in questions],
                          "question": [q["text"] for q in questions], "label": labels,
                          "answer": answers, "parsed": [parse_answer(a) for a in answers],
                          "yes_minus_no": right, "yes_minus_no_deranged": wrong},
                         artifact_file=f"pope_{split}_predictions.json")
    return metrics
