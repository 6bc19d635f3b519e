"""Predictions matched to their questions before any scorer sees them."""

from __future__ import annotations


def answers_in_order(expected: list, predictions: list[dict], *, key: str, answer: str, what: str) -> list[str]:
    """The `answer` fields of `predictions`, once each prediction's `key` is checked to be the question's in order.

    The official scorers zip predictions with questions by position; a file out of order, short or padded would be
    scored against the wrong truths, so it stops here with the first mismatch.
    """
    if len(predictions) != len(expected):
        raise ValueError(f"{what}: {len(predictions)} predictions for {len(expected)} questions")
    for n, (want, pred) in enumerate(zip(expected, predictions), 1):
        if key not in pred or answer not in pred:
            raise ValueError(f"{what}: prediction {n} lacks {key!r} or {answer!r}: {pred}")
        if pred[key] != want:
            raise ValueError(f"{what}: prediction {n} is for {key} {pred[key]!r} but question {n} is {want!r}: "
                             "predictions out of order")
        if not isinstance(pred[answer], str):
            raise ValueError(f"{what}: prediction {n}: answer {pred[answer]!r} is not text")
    return [p[answer] for p in predictions]


def qa_conversation(question: str) -> list[dict]:
    """A question about one image, as MME, POPE and Unicorn ask it: the image, then the question."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
