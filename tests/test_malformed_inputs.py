"""Property: whatever a LLaVA file, a benchmark file or a `-S` override holds, reading it either succeeds or raises the
one input error (BadInput: one line naming file, where and why, exit 2 in the CLI); never another exception, never a
changed file. The default suite runs a short profile; `-m slow` the long one."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from sightbeyond.data.llava_format import read_llava_file
from sightbeyond.io import BadInput
from sightbeyond.tasks import captions, local_docs, mme, pope, unicorn

# no deadline (a shared machine), no example database written into the checkout
COMMON = dict(deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
QUICK, LONG = settings(max_examples=30, **COMMON), settings(max_examples=600, **COMMON)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, width=16) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(list(";,\t\n\"[]{}<>")), max_size=24)


def damaged(text: str, data) -> bytes:
    """The file's text as written, or cut short, or with bytes that are not UTF-8 in it."""
    raw = text.encode()
    how = data.draw(st.sampled_from(["as is", "cut", "bad byte"]), label="damage")
    at = data.draw(st.integers(0, len(raw)), label="at")
    return raw if how == "as is" else raw[:at] if how == "cut" else raw[:at] + b"\xff\xfe" + raw[at:]


# --- what a reader is given ---------------------------------------------------------------------------------------

turns = st.lists(st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", 1]),
                                        "value": st.sampled_from(["<image>\nWhat is it?", "A circle.", "<image><image>", ""])
                                        | texts | json_values}), max_size=3)
llava_records = st.lists(st.fixed_dictionaries({"id": st.text(max_size=6) | st.integers() | json_values,
                                                "image": st.sampled_from(["ok.png", "missing.png", "broken.png", "", "F.tif"])
                                                | json_values, "conversations": turns | json_values})
                         | json_values, max_size=4)


def write_llava(folder: Path, records, data) -> Path:
    Image.new("RGB", (4, 4)).save(folder / "ok.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    Image.new("F", (4, 4)).save(folder / "F.tif")
    path = folder / "records.json"
    path.write_bytes(damaged(json.dumps(records), data))
    return path


def csv_text(rows: list[list[str]], header: list[str] | None) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(([header] if header else []) + rows)
    return out.getvalue()


TRUTHFULQA_HEADER = ["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"]
CSV_READERS = {  # reader: the header the release has (None: header-less), and its columns
    "truthfulqa_mc": TRUTHFULQA_HEADER, "truthfulqa_gen": TRUTHFULQA_HEADER,
    "ethics_commonsense": ["label", "input", "is_short", "edited"], "ethics_deontology": ["label", "scenario", "excuse"],
    "ethics_justice": ["label", "scenario"], "ethics_virtue": ["label", "scenario"],
    "ethics_utilitarianism": None, "mmlu": None,
}
cells = texts | st.sampled_from(["0", "1", "A", "True", "a;b", ";", " ; ", "x [SEP] y", "#### 4"])


def accepted_or_refused(read) -> None:
    """The property: `read()` returns, or raises BadInput with one line naming something; nothing else."""
    try:
        read()
    except BadInput as err:
        message = str(err)
        assert message and "\n" not in message.strip() and "Traceback" not in message, message


def unchanged(folder: Path):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- the properties -----------------------------------------------------------------------------------------------


def llava_property(data) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        path = write_llava(folder, data.draw(llava_records, label="records"), data)
        before = unchanged(folder)
        policy, with_image = data.draw(st.sampled_from(["error", "skip"])), data.draw(st.booleans())
        accepted_or_refused(lambda: list(read_llava_file(path, folder, on_bad_record=policy, with_image=with_image)))
        assert unchanged(folder) == before


def benchmark_property(data) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        kind = data.draw(st.sampled_from([*CSV_READERS, "gsm8k", "boolq", "mathqa", "squad_v2", "pope", "mme", "unicorn",
                                          "karpathy"]), label="reader")
        if kind in CSV_READERS:
            header = CSV_READERS[kind]
            header = data.draw(st.sampled_from([header, header and header[:-1], header and header[::-1]]), label="header")
            rows = data.draw(st.lists(st.lists(cells, max_size=8), max_size=4), label="rows")
            path = folder / "file.csv"
            path.write_bytes(damaged(csv_text(rows, header), data))
            read = lambda: local_docs.read(kind, {"test": path}, "subject")  # noqa: E731  (rows encoded as the hub's)
        elif kind in ("gsm8k", "boolq", "pope"):
            path = folder / "coco_pope_random.json"
            lines = data.draw(st.lists(json_values | st.fixed_dictionaries(
                {"question_id": json_values, "image": st.sampled_from(["a.jpg"]) | json_values, "text": texts | json_values,
                 "label": st.sampled_from(["yes", "no", "maybe"]), "question": texts, "answer": texts | st.booleans(),
                 "title": texts, "passage": texts}), max_size=4), label="lines")
            path.write_bytes(damaged("".join(json.dumps(line) + "\n" for line in lines), data))
            read = (lambda: pope.read_pope(path)) if kind == "pope" else (lambda: local_docs.read(kind, {"test": path}, None))
        elif kind == "mme":
            (folder / "count").mkdir()
            Image.new("RGB", (4, 4)).save(folder / "count" / "1.png")
            text = data.draw(st.lists(st.tuples(texts, st.sampled_from(["Yes", "No", "yes", "Maybe", ""])), max_size=3))
            (folder / "count" / "1.txt").write_bytes(damaged("".join(f"{q}\t{a}\n" for q, a in text), data))
            read = lambda: mme.read_mme(folder, ["count"])  # noqa: E731
        else:  # one JSON file: MathQA, SQuAD, Unicorn, Karpathy
            content = data.draw(json_values | st.lists(st.fixed_dictionaries(
                {"image": texts, "question": texts | json_values, "text_answer": st.sampled_from(["Yes", "7"]),
                 "situation": st.sampled_from(["iid", "rain"]), "answer": st.sampled_from(["Yes", "no"])}), max_size=3)
                | st.fixed_dictionaries({"images": json_values | st.lists(st.fixed_dictionaries(
                    {"filename": texts | json_values, "split": st.sampled_from(["test", "train"]),
                     "sentences": st.lists(st.fixed_dictionaries({"raw": texts | json_values}), max_size=2) | json_values}),
                    max_size=3)}), label="content")
            name = {"unicorn": "oodcv-vqa/oodcv-vqa.json", "karpathy": "dataset_coco.json"}.get(kind, "file.json")
            path = folder / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(damaged(json.dumps(content), data))
            read = {"unicorn": lambda: unicorn.read_oodcv(folder), "karpathy": lambda: captions.read_karpathy(path, folder),
                    "mathqa": lambda: local_docs.read("mathqa", {"test": path}, None),
                    "squad_v2": lambda: local_docs.read("squad_v2", {"test": path}, None)}[kind]
        before = unchanged(folder)
        accepted_or_refused(read)
        assert unchanged(folder) == before


KEYS = ["backbone", "data", "preset", "stage2.save_steps", "stage2.stepwise_tasks", "presets.tiny.stage2.learning_rate.ft",
        "presets.tiny.stage2", "eval_nlp.tasks", "eval_mm.benchmarks", "eval_mm.splits", "grid.tuning", "tracking",
        "prepare.heldout", "backbones.tiny.llm", "nothing.here", "stage2.save_steps.deeper"]
yaml_values = st.sampled_from(["1", "-1", "0.5", "null", "[]", "[lora]", "{a: 1}", "'x'", "[1, 2", "{", "a: b: c", "!!python/object:os.system",
                               "tiny", "ft", "- x", "\t", ":", "1e400", "'unclosed", "[random, nowhere]"]) | texts


def override_property(data, root: Path, monkeypatch, capsys) -> None:
    from sightbeyond.cli import main

    key = data.draw(st.sampled_from(KEYS) | st.text(max_size=10), label="key")
    value = data.draw(yaml_values, label="value")
    before = unchanged(root)
    code = main([f"--set={key}={value}", "check"])  # one argument, whatever the key starts with
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == 0 or (code == 2 and len([line for line in err.splitlines() if " error: " in line]) == 1), err
    assert unchanged(root) == before


@pytest.fixture
def project(tiny_project, monkeypatch):
    root = tiny_project()
    monkeypatch.chdir(root)
    monkeypatch.setenv("SIGHTBEYOND_ROOT", str(root))
    return root


@QUICK
@given(st.data())
def test_llava_files_are_read_or_refused_in_one_line(data):
    llava_property(data)


@QUICK
@given(st.data())
def test_benchmark_files_are_read_or_refused_in_one_line(data):
    benchmark_property(data)


@QUICK
@given(data=st.data())
def test_overrides_are_taken_or_refused_in_one_line(data, project, monkeypatch, capsys):
    override_property(data, project, monkeypatch, capsys)


@pytest.mark.slow
@LONG
@given(st.data())
def test_llava_files_long(data):
    llava_property(data)


@pytest.mark.slow
@LONG
@given(st.data())
def test_benchmark_files_long(data):
    benchmark_property(data)


@pytest.mark.slow
@LONG
@given(data=st.data())
def test_overrides_long(data, project, monkeypatch, capsys):
    override_property(data, project, monkeypatch, capsys)
