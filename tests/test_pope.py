"""POPE's official parsing (first sentence, commas dropped, "No"/"not"/"no" means no) and metrics, checked by hand."""

from __future__ import annotations

import pytest

from sightbeyond.tasks.pope import parse_answer, pope_metrics, readable, score_pope


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
    assert m["unreadable"] == pytest.approx(1 / 5)  # "" is read as yes, but says neither


@pytest.mark.parametrize("answer, readable_", [
    ("Yes, there is a dog.", True), ("yes.", True), ("No.", True), ("There is not a dog.", True),
    ("A dog on a sofa.", False), ("", False), ("The image shows yes-men. No.", False),
])
def test_unreadable_answers_are_told_apart_from_wrong_ones(answer, readable_):
    assert readable(answer) is readable_


def test_answers_must_match_questions():
    with pytest.raises(ValueError, match="4 answers for 5 questions"):
        pope_metrics(["yes"] * 5, ["yes"] * 4)


QUESTIONS = [{"question_id": i, "label": label} for i, label in enumerate(["yes", "no", "yes"], 1)]


def test_answer_records_are_matched_by_question_id():
    answers = [{"question_id": 1, "answer": "Yes"}, {"question_id": 2, "answer": "No, there is not."},
               {"question_id": 3, "answer": ""}]
    assert score_pope(QUESTIONS, answers) == pope_metrics(["yes", "no", "yes"], ["Yes", "No, there is not.", ""])


def test_answer_records_out_of_order_or_missing_stop():
    swapped = [{"question_id": 2, "answer": "No"}, {"question_id": 1, "answer": "Yes"}, {"question_id": 3, "answer": "Yes"}]
    with pytest.raises(ValueError, match="prediction 1 is for question_id 2 but question 1 is 1: predictions out of order"):
        score_pope(QUESTIONS, swapped)
    with pytest.raises(ValueError, match="2 predictions for 3 questions"):
        score_pope(QUESTIONS, swapped[:2])
    with pytest.raises(ValueError, match="lacks 'question_id' or 'answer'"):
        score_pope(QUESTIONS, [{"question_id": 1, "text": "Yes"}] * 3)
