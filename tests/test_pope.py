"""POPE's official parsing (first sentence, commas dropped, "No"/"not"/"no" means no) and metrics, checked by hand."""

from __future__ import annotations

import pytest

from sightbeyond.evaluation.pope import parse_answer, pope_metrics


@pytest.mark.parametrize("answer, parsed", [
    ("No, there is not.", "no"),
    ("Yes", "yes"),
    ("There is no dog.", "no"),
    ("", "yes"),                       # the official script reads anything without a negation as yes
    ("I can't tell", "yes"),           # "can't" is not one of its words
    ("Yes. There is no cat though.", "yes"),  # only the first sentence counts
    ("NO", "yes"),                     # case-sensitive, as the official script
    ("Not really", "yes"),
    ("It is not there", "no"),
])
def test_official_parsing(answer, parsed):
    assert parse_answer(answer) == parsed


def test_metrics_on_a_hand_counted_example():
    labels = ["yes", "yes", "no", "no", "no"]
    answers = ["Yes", "No, there is not.", "There is no dog.", "Yes, a dog.", ""]
    # preds: yes, no, no, yes, yes -> TP=1 FN=1 TN=1 FP=2
    m = pope_metrics(labels, answers)
    assert m["acc"] == pytest.approx(2 / 5)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert m["yes_ratio"] == pytest.approx(3 / 5)


def test_answers_must_match_questions():
    with pytest.raises(ValueError, match="4 answers for 5 questions"):
        pope_metrics(["yes"] * 5, ["yes"] * 4)
