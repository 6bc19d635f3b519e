"""MME: the release layout read as the eval tool's tooling reads it, and its calculation.py's rules, checked by hand."""

from __future__ import annotations

import pytest

from sightbeyond.tasks.mme import Question, eval_tool_line, mme_metrics, parse_answer, read_mme, score_subtask


@pytest.mark.parametrize("answer, parsed", [
    ("No, there is not.", "no"),    # lower-cased; "no" within the first four characters
    ("Yes", "yes"),
    ("There is no dog.", "other"),  # "no" only past the first four characters
    ("", "other"),
    ("I can't tell", "other"),
    ("NO", "no"),
    ("Not really", "no"),           # "not " holds "no"
    ("Yesterday", "yes"),
    ("I think yes", "other"),
])
def test_official_parsing(answer, parsed):
    assert parse_answer(answer) == parsed


def lines(*rows):
    return ["\t".join(r) for r in rows]


EXISTENCE = lines(
    ("1.jpg", "Is there a dog?", "Yes", "Yes"),                # right
    ("1.jpg", "Is there a cat?", "No", "No, there is not."),   # right: both right, acc+ counts it
    ("2.jpg", "Is there a dog?", "Yes", "There is no dog."),   # other: wrong
    ("2.jpg", "Is there a cat?", "No", "No"),                  # right
    ("3.jpg", "Is there a dog?", "Yes", ""),                   # other: wrong
    ("3.jpg", "Is there a cat?", "No", "I can't tell"),        # other: wrong
)


def test_score_by_hand():
    s = score_subtask(EXISTENCE)
    assert s["acc"] == pytest.approx(3 / 6)
    assert s["acc_plus"] == pytest.approx(1 / 3)
    assert s["score"] == pytest.approx(100 * (3 / 6 + 1 / 3))


def test_perception_and_cognition_sum_their_subtasks():
    code = lines(("c.png", "Is it 7?", "Yes", "yes"), ("c.png", "Is it 8?", "No", "no"))
    m = mme_metrics({"existence": EXISTENCE, "count": lines(("n.jpg", "q", "Yes", "No"), ("n.jpg", "q2", "No", "Yes")),
                     "code_reasoning": code})
    assert m["mme/existence"] == pytest.approx(100 * (1 / 2 + 1 / 3))
    assert m["mme/count"] == 0
    assert m["mme/code_reasoning"] == pytest.approx(200)
    assert m["mme/perception"] == pytest.approx(100 * (1 / 2 + 1 / 3))
    assert m["mme/cognition"] == pytest.approx(200)
    assert m["mme/unreadable"] == pytest.approx(3 / 10)  # the parser's "other": three of EXISTENCE's six answers


def test_lines_out_of_order_stop():
    shuffled = [EXISTENCE[0], EXISTENCE[2], EXISTENCE[1], *EXISTENCE[3:]]
    with pytest.raises(ValueError, match="different images.*out of order"):
        score_subtask(shuffled)
    with pytest.raises(ValueError, match="two per image"):
        score_subtask(EXISTENCE[:5])
    with pytest.raises(ValueError, match="truth 'maybe'"):
        score_subtask(lines(("1.jpg", "q", "maybe", "yes"), ("1.jpg", "q", "No", "no")))
    with pytest.raises(ValueError, match="not MME subtasks"):
        mme_metrics({"existance": EXISTENCE})


def test_answers_with_tabs_and_line_breaks_stay_one_field(tmp_path):
    q = Question("existence", "1.jpg", tmp_path / "1.jpg", "Is there a dog?", "Yes")
    line = eval_tool_line(q, "Yes\tit is\nthere")
    assert line == "1.jpg\tIs there a dog?\tYes\tYes it is there"
    other = Question("existence", "1.jpg", tmp_path / "1.jpg", "Is there a cat?", "No")
    assert score_subtask([line, eval_tool_line(other, "no")])["acc"] == 1.0


def write_release(root):
    """Both of the release's folder styles: images/ + questions_answers_YN/ (posters), and side by side (count)."""
    (root / "posters/images").mkdir(parents=True)
    (root / "posters/questions_answers_YN").mkdir()
    for stem in ("b", "a"):
        (root / "posters/images" / f"{stem}.jpg").write_bytes(b"")
        (root / "posters/questions_answers_YN" / f"{stem}.txt").write_text(f"Is it {stem}?\tYes\nIs it z?\tNo\n")
    (root / "count").mkdir()
    (root / "count/x.png").write_bytes(b"")
    (root / "count/x.txt").write_text("Are there two?\tNo\r\nAre there three?\tYes\r\n")


def test_release_layouts(tmp_path):
    write_release(tmp_path)
    qs = read_mme(tmp_path, ["posters", "count"])
    assert [(q.subtask, q.image, q.question, q.truth) for q in qs] == [
        ("posters", "a.jpg", "Is it a?", "Yes"), ("posters", "a.jpg", "Is it z?", "No"),
        ("posters", "b.jpg", "Is it b?", "Yes"), ("posters", "b.jpg", "Is it z?", "No"),
        ("count", "x.png", "Are there two?", "No"), ("count", "x.png", "Are there three?", "Yes"),
    ]
    assert qs[0].path == tmp_path / "posters/images/a.jpg"


def test_release_errors(tmp_path):
    write_release(tmp_path)
    with pytest.raises(FileNotFoundError, match="scene: MME subtask folder missing"):
        read_mme(tmp_path, ["scene"])
    (tmp_path / "count/y.txt").write_text("q\tYes\nq2\tNo\n")
    with pytest.raises(FileNotFoundError, match="no image y.jpg"):
        read_mme(tmp_path, ["count"])
    (tmp_path / "count/y.jpg").write_bytes(b"")
    (tmp_path / "count/y.txt").write_text("q\tYes\n")
    with pytest.raises(ValueError, match="two questions per image, found 1"):
        read_mme(tmp_path, ["count"])
    (tmp_path / "count/y.txt").write_text("q\tYes\nq2\tPerhaps\n")
    with pytest.raises(ValueError, match="line 2"):
        read_mme(tmp_path, ["count"])
