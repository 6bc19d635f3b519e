"""POPE's official answer parsing and metrics (Li et al., 2023, `evaluate.py`)."""

from __future__ import annotations

from sightbeyond.tasks.predictions import answers_in_order


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
