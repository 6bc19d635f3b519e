"""Unicorn: OODCV-VQA's substring matching and Sketchy-VQA's word parsing, as its official code scores, by hand."""

from __future__ import annotations

import json
import math

import pytest

from sightbeyond.tasks.unicorn import (
    oodcv_accuracy,
    oodcv_correct,
    read_oodcv,
    read_sketchy,
    sketchy_accuracy,
    sketchy_parse,
)


@pytest.mark.parametrize("prediction, truth, correct", [
    ("No, there is not.", "No", True),
    ("Yes", "Yes", True),
    ("There is no dog.", "No", True),
    ("There is no dog.", "Yes", False),
    ("", "Yes", False),
    ("", "No", False),
    ("I can't tell", "No", False),
    ("I can't tell", "Yes", False),
    ("I know it", "No", True),          # plain substrings: "know" holds "no"
    ("None", "1", True),                # and "None" holds "one"
    ("There is no dog.", "0", True),
    ("Yes. No.", "No", True),           # the periods go before the split, so this is no "first sentence"
    ("2.5 dogs", "3", False),           # a period before a digit stays, and the text is cut there: "2"
    ("There are 3.", "3", True),
    ("three", "3", True),
])
def test_oodcv_matching(prediction, truth, correct):
    assert oodcv_correct(prediction, truth) is correct


def oodcv_items(*rows):
    return [{"image": image, "question": "q", "text_answer": truth, "situation": "iid"} for image, truth in rows]


def test_oodcv_accuracy_by_hand():
    items = oodcv_items(("a.jpg", "Yes"), ("b.jpg", "No"), ("c.jpg", "2"), ("d.jpg", "No"))
    preds = ["Yes", "I can't tell", "There are two.", "No, there is not."]
    m = oodcv_accuracy(items, [{"image": i["image"], "prediction": p} for i, p in zip(items, preds)])
    assert m == {"acc": 3 / 4, "scored": 4}


def test_oodcv_keeps_the_last_question_of_an_image_as_the_official():
    items = oodcv_items(("a.jpg", "Yes"), ("a.jpg", "2"), ("b.jpg", "No"))
    preds = [{"image": "a.jpg", "prediction": "Yes"}, {"image": "a.jpg", "prediction": "one"},
             {"image": "b.jpg", "prediction": "no"}]
    with pytest.warns(UserWarning, match="3 questions on 2 images"):
        m = oodcv_accuracy(items, preds)
    assert m == {"acc": 1 / 2, "scored": 2}


def test_predictions_out_of_order_stop():
    items = oodcv_items(("a.jpg", "Yes"), ("b.jpg", "No"))
    with pytest.raises(ValueError, match="prediction 1 is for image 'b.jpg' but question 1 is 'a.jpg'"):
        oodcv_accuracy(items, [{"image": "b.jpg", "prediction": "no"}, {"image": "a.jpg", "prediction": "yes"}])
    with pytest.raises(ValueError, match="1 predictions for 2 questions"):
        sketchy_accuracy([{"image": "a.png", "answer": "Yes"}, {"image": "b.png", "answer": "No"}],
                         [{"image": "a.png", "answer": "yes"}])


@pytest.mark.parametrize("answer, parsed", [
    ("No, there is not.", "no"),
    ("Yes", "yes"),
    ("There is no dog.", "no"),
    ("", None),
    ("I can't tell", None),
    ("Yes.", None),          # split at spaces only: "Yes." is not a word of its list
    ("Yes, no", "no"),       # no is looked for first
    ("yeah sure", "yes"),
])
def test_sketchy_parsing(answer, parsed):
    assert sketchy_parse(answer) == parsed


def test_sketchy_accuracy_leaves_unparsed_answers_out():
    items = [{"image": f"{i}.png", "answer": a} for i, a in enumerate(["Yes", "No", "Yes", "No", "Yes"])]
    answers = ["Yes", "No, there is not.", "", "I can't tell", "There is no dog."]
    # parsed: yes (right), no (right), -, -, no (wrong): 2 of the 3 parsed
    m = sketchy_accuracy(items, [{"image": i["image"], "answer": a} for i, a in zip(items, answers)])
    assert m == {"acc": 2 / 3, "unparsed": 2, "unreadable": 2 / 5}


def test_sketchy_with_nothing_parsed_is_undefined():
    items = [{"image": "a.png", "answer": "Yes"}]
    with pytest.warns(UserWarning, match="undefined"):
        m = sketchy_accuracy(items, [{"image": "a.png", "answer": "I can't tell"}])
    assert math.isnan(m["acc"]) and m["unparsed"] == 1 and m["unreadable"] == 1


def write(root, task, items):
    (root / task).mkdir(parents=True, exist_ok=True)
    (root / task / f"{task}.json").write_text(json.dumps(items))


def test_release_layout_and_its_checks(tmp_path):
    write(tmp_path, "oodcv-vqa", [{"image": "img/1.jpg", "question": "How many cars?", "answer": "A",
                                   "text_answer": "2", "options": ["A. 2", "B. 3"], "situation": "weather"}])
    write(tmp_path, "sketchy-vqa", [{"image": "skechydata/png/cat/1.png", "question": "Is this a cat?", "answer": "Yes"}])
    assert read_oodcv(tmp_path)[0]["path"] == tmp_path / "oodcv-vqa/img/1.jpg"
    assert read_sketchy(tmp_path)[0]["path"] == tmp_path / "sketchy-vqa/skechydata/png/cat/1.png"
    write(tmp_path, "sketchy-vqa", [{"image": "1.png", "question": "q", "answer": "no"}])
    with pytest.raises(ValueError, match="answer 'no' is not 'Yes' or 'No'"):  # the official would read it as yes
        read_sketchy(tmp_path)
    write(tmp_path, "oodcv-vqa", [{"image": "1.jpg", "question": "q", "text_answer": "7", "situation": "iid"}])
    with pytest.raises(ValueError, match="text_answer '7'"):
        read_oodcv(tmp_path)
    write(tmp_path, "oodcv-vqa", [{"image": "1.jpg", "question": "q", "text_answer": "No", "situation": "rain"}])
    with pytest.raises(ValueError, match="situation 'rain'"):
        read_oodcv(tmp_path)
