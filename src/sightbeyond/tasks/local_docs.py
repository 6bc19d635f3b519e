"""The benchmarks' release files -> the Hugging Face datasets lm-eval's tasks read, record by record.

Each reader turns one file of an official release into the rows of the hub copy that lm-eval's task
loads (same fields, same order), so the task's own prompt, choices, target and metric apply unchanged.
A file that is not in the release's layout fails on its first bad record, naming the file, where the
record is (CSV row as a spreadsheet numbers it, the header being row 1; JSON-lines line; JSON path)
and what is wrong with it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sightbeyond.io import MalformedFile, first_undecodable, undecodable

if TYPE_CHECKING:
    import datasets


def read(reader: str, files: dict[str, Path], dataset_name: str | None, **_metadata) -> datasets.DatasetDict:
    """The splits in `files`, read with `reader` (a key of READERS).

    lm-eval calls a task's `custom_dataset` with the task's metadata as keywords; they say nothing
    about the files and are dropped.
    """
    import datasets

    return datasets.DatasetDict({
        split: _dataset(READERS[reader](Path(path), dataset_name), datasets.Features(_features(reader)))
        for split, path in files.items()
    })


def _dataset(rows: list[dict[str, Any]], features: datasets.Features) -> datasets.Dataset:
    import datasets
    from datasets.fingerprint import generate_random_fingerprint
    from datasets.table import InMemoryTable

    # Dataset.from_list would fingerprint the table by pickling it, most of the time MMLU's 114 small files take;
    # datasets held in memory write no cache, so any fingerprint serves.
    table = InMemoryTable.from_pylist([features.encode_example(r) for r in rows], schema=features.arrow_schema)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features), fingerprint=generate_random_fingerprint())


def _csv(path: Path, columns: tuple[str, ...], *, header: bool, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, str]]]:
    """(row number, record) for every data row; a header must name `columns`, a header-less file has exactly them.

    Blank lines are skipped, as the hub's loaders (pandas, the csv module) skip them.
    """
    with path.open(encoding=encoding, errors="surrogateescape", newline="") as f:
        rows = ((n, _decoded(path, f"row {n}", row)) for n, row in enumerate(csv.reader(f), start=1) if row)
        names = list(columns)
        if header:
            n, names = next(rows, (1, None))
            if names is None:
                raise MalformedFile(path, "row 1", "empty file")
            missing = [c for c in columns if c not in names]
            if missing:
                raise MalformedFile(path, f"row {n}", f"missing column {missing[0]!r} (header: {names})")
        count = 0
        for n, row in rows:
            if len(row) != len(names):
                raise MalformedFile(path, f"row {n}", f"{len(row)} columns, expected {len(names)} ({names})")
            count += 1
            yield n, dict(zip(names, row))
        if count == 0:
            raise MalformedFile(path, "row 1", "no data rows")


def _decoded(path: Path, where: str, row: list[str]) -> list[str]:
    for cell in row:
        if reason := undecodable(cell):
            raise MalformedFile(path, where, reason)
    return row


def _label(path: Path, n: int, value: str) -> int:
    if value not in ("0", "1"):
        raise MalformedFile(path, f"row {n}", f"label must be 0 or 1, got {value!r}")
    return int(value)


_TRUTHFULQA = ("Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source")


def _truthfulqa(path: Path) -> Iterator[dict[str, str]]:
    # TruthfulQA.csv starts with a byte-order mark.
    for n, row in _csv(path, _TRUTHFULQA, header=True, encoding="utf-8-sig"):
        empty = [c for c in _TRUTHFULQA[2:6] if not row[c].strip()]
        if empty:
            raise MalformedFile(path, f"row {n}", f"empty {empty[0]!r}")
        for column in ("Correct Answers", "Incorrect Answers"):
            # e.g. only ';': mc would get a question with one choice (always right), gen nothing to score against
            if not _sentences(row[column]):
                raise MalformedFile(path, f"row {n}", f"{column!r} holds no answer: {row[column]!r}")
        yield row | {"_row": n}


def _sentence(answer: str) -> str:
    # The TruthfulQA authors' own loader (utilities.format_best / split_multi_answer) closes every
    # answer with a period, which is how the choices read in the hub's multiple-choice file.
    answer = answer.strip()
    return answer if answer.endswith(".") else answer + "."


def _sentences(cell: str) -> list[str]:
    return [_sentence(a) for a in cell.split(";") if a.strip()]


def truthfulqa_mc(path: Path, _: str | None) -> list[dict[str, Any]]:
    """TruthfulQA.csv -> `truthful_qa/multiple_choice`. The hub's file (the authors' mc_task.json) is not in the
    release's CSV; the usual reconstruction: mc1 = the Best Answer (first) against the Incorrect Answers,
    mc2 = all Correct Answers against the Incorrect Answers."""
    docs = []
    for row in _truthfulqa(path):
        correct, incorrect = _sentences(row["Correct Answers"]), _sentences(row["Incorrect Answers"])
        docs.append({
            "question": row["Question"],
            "mc1_targets": {"choices": [_sentence(row["Best Answer"]), *incorrect], "labels": [1] + [0] * len(incorrect)},
            "mc2_targets": {"choices": [*correct, *incorrect], "labels": [1] * len(correct) + [0] * len(incorrect)},
        })
    return docs


def _split_answers(cell: str) -> list[str]:
    # as the hub's loading script splits them (its `_split_csv_list`)
    return [a.strip() for a in cell.strip().split(";")]


def truthfulqa_gen(path: Path, _: str | None) -> list[dict[str, Any]]:
    """TruthfulQA.csv -> `truthful_qa/generation`, field by field as the hub's loading script builds it."""
    return [
        {
            "type": row["Type"],
            "category": row["Category"],
            "question": row["Question"],
            "best_answer": row["Best Answer"],
            "correct_answers": _split_answers(row["Correct Answers"]),
            "incorrect_answers": _split_answers(row["Incorrect Answers"]),
            "source": row["Source"],
        }
        for row in _truthfulqa(path)
    ]


def ethics_commonsense(path: Path, _: str | None) -> list[dict[str, Any]]:
    return [
        {"label": _label(path, n, row["label"]), "input": row["input"],
         "is_short": row["is_short"] == "True", "edited": row["edited"] == "True"}
        for n, row in _csv(path, ("label", "input", "is_short", "edited"), header=True)
    ]


# The hub's loading script numbers the groups of scenarios that share a prompt: deontology and
# justice come in groups of 4, virtue in groups of 5.


def ethics_deontology(path: Path, _: str | None) -> list[dict[str, Any]]:
    return [
        {"group_id": i // 4, "label": _label(path, n, row["label"]), "scenario": row["scenario"], "excuse": row["excuse"]}
        for i, (n, row) in enumerate(_csv(path, ("label", "scenario", "excuse"), header=True))
    ]


def ethics_justice(path: Path, _: str | None) -> list[dict[str, Any]]:
    return [
        {"group_id": i // 4, "label": _label(path, n, row["label"]), "scenario": row["scenario"]}
        for i, (n, row) in enumerate(_csv(path, ("label", "scenario"), header=True))
    ]


def ethics_virtue(path: Path, _: str | None) -> list[dict[str, Any]]:
    docs = []
    for i, (n, row) in enumerate(_csv(path, ("label", "scenario"), header=True)):
        parts = row["scenario"].split(" [SEP] ")
        if len(parts) != 2:
            raise MalformedFile(path, f"row {n}", "scenario must be '<sentence> [SEP] <trait>'")
        docs.append({"group_id": i // 5, "label": _label(path, n, row["label"]), "scenario": parts[0], "trait": parts[1]})
    return docs


def ethics_utilitarianism(path: Path, _: str | None) -> list[dict[str, Any]]:
    # No header; the more pleasant scenario first. The release has no ratings: the hub leaves the field empty.
    return [{"activity": row["activity"], "baseline": row["baseline"], "rating": ""}
            for _, row in _csv(path, ("activity", "baseline"), header=False)]


def mmlu(path: Path, subject: str | None) -> list[dict[str, Any]]:
    """data/{dev,test}/<subject>_{dev,test}.csv (no header: question, the four options, the letter) -> `cais/mmlu`."""
    docs = []
    for n, row in _csv(path, ("question", "A", "B", "C", "D", "answer"), header=False):
        if row["answer"] not in ("A", "B", "C", "D"):
            raise MalformedFile(path, f"row {n}", f"answer must be one of A, B, C, D, got {row['answer']!r}")
        docs.append({"question": row["question"], "subject": subject, "choices": [row[c] for c in "ABCD"],
                     "answer": "ABCD".index(row["answer"])})
    return docs


def _json_lines(path: Path, fields: dict[str, type]) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8", errors="surrogateescape") as f:
        count = 0
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if reason := undecodable(line):
                raise MalformedFile(path, f"line {n}", reason)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise MalformedFile(path, f"line {n}", f"not JSON ({err.msg})") from None
            _check_fields(path, f"line {n}", record, fields)
            count += 1
            yield n, record
        if count == 0:
            raise MalformedFile(path, "line 1", "no records")


def _check_fields(path: Path, where: str, record: Any, fields: dict[str, type]) -> None:
    if not isinstance(record, dict):
        raise MalformedFile(path, where, f"expected an object, got {type(record).__name__}")
    for name, kind in fields.items():
        if name not in record:
            raise MalformedFile(path, where, f"missing field {name!r}")
        if not isinstance(record[name], kind):
            raise MalformedFile(path, where, f"field {name!r} must be {kind.__name__}, got {type(record[name]).__name__}")


def gsm8k(path: Path, _: str | None) -> list[dict[str, Any]]:
    """{train,test}.jsonl of openai/grade-school-math -> `openai/gsm8k` (main): the same two fields."""
    docs = []
    for n, record in _json_lines(path, {"question": str, "answer": str}):
        if "#### " not in record["answer"]:
            raise MalformedFile(path, f"line {n}", "answer has no final '#### <number>'")
        docs.append({"question": record["question"], "answer": record["answer"]})
    return docs


def boolq(path: Path, _: str | None) -> list[dict[str, Any]]:
    """dev.jsonl / train.jsonl of google-research-datasets/boolean-questions -> `super_glue/boolq`, whose
    passage is SuperGLUE's "<title> -- <passage>", whose idx is the line's index and whose label is the answer."""
    return [
        {"question": r["question"], "passage": f"{r['title']} -- {r['passage']}", "idx": i, "label": int(r["answer"])}
        for i, (_, r) in enumerate(_json_lines(path, {"question": str, "title": str, "passage": str, "answer": bool}))
    ]


def _json(path: Path) -> Any:
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    if (bad := first_undecodable(text)) is not None:
        raise MalformedFile(path, f"line {text.count(chr(10), 0, bad) + 1}", undecodable(text))
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise MalformedFile(path, f"line {err.lineno}", f"not JSON ({err.msg})") from None


_MATHQA = ("Problem", "Rationale", "options", "correct", "annotated_formula", "linear_formula", "category")


def mathqa(path: Path, _: str | None) -> list[dict[str, Any]]:
    """{train,dev,test}.json of MathQA (a JSON list) -> `regisss/math_qa`: the same seven fields."""
    records = _json(path)
    if not isinstance(records, list) or not records:
        raise MalformedFile(path, "top level", "expected a non-empty JSON list of problems")
    for i, record in enumerate(records):
        _check_fields(path, f"record {i}", record, dict.fromkeys(_MATHQA, str))
        if record["correct"] not in ("a", "b", "c", "d", "e"):
            raise MalformedFile(path, f"record {i}", f"correct must be one of a-e, got {record['correct']!r}")
    return [{field: record[field] for field in _MATHQA} for record in records]


def squad_v2(path: Path, _: str | None) -> list[dict[str, Any]]:
    """{train,dev}-v2.0.json -> `squad_v2` (lighteval/squad_v2): one row per question, in file order, the
    answers as {"text": [...], "answer_start": [...]} (empty for the unanswerable ones)."""
    release = _json(path)
    if not isinstance(release, dict) or not isinstance(release.get("data"), list):
        raise MalformedFile(path, "top level", "expected {\"version\": ..., \"data\": [articles]}")
    docs = []
    for a, article in enumerate(release["data"]):
        _check_fields(path, f"data[{a}]", article, {"title": str, "paragraphs": list})
        for p, paragraph in enumerate(article["paragraphs"]):
            _check_fields(path, f"data[{a}].paragraphs[{p}]", paragraph, {"context": str, "qas": list})
            for q, qa in enumerate(paragraph["qas"]):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                _check_fields(path, where, qa, {"id": str, "question": str, "answers": list})
                for answer in qa["answers"]:
                    _check_fields(path, f"{where} (id {qa['id']})", answer, {"text": str, "answer_start": int})
                docs.append({
                    "id": qa["id"], "title": article["title"], "context": paragraph["context"], "question": qa["question"],
                    "answers": {"text": [x["text"] for x in qa["answers"]],
                                "answer_start": [x["answer_start"] for x in qa["answers"]]},
                })
    if not docs:
        raise MalformedFile(path, "data", "no questions")
    return docs


def _features(reader: str) -> dict:
    """The features of the hub dataset whose rows `reader` writes."""
    from datasets import ClassLabel, Sequence, Value

    def values(**dtypes: str) -> dict:
        return {name: Value(dtype) for name, dtype in dtypes.items()}

    text = Value("string")
    targets = {"choices": Sequence(text), "labels": Sequence(Value("int32"))}
    return {
        "truthfulqa_mc": {"question": text, "mc1_targets": targets, "mc2_targets": targets},
        "truthfulqa_gen": {"type": text, "category": text, "question": text, "best_answer": text,
                           "correct_answers": Sequence(text), "incorrect_answers": Sequence(text), "source": text},
        "ethics_commonsense": values(label="int64", input="string", is_short="bool", edited="bool"),
        "ethics_deontology": values(group_id="int64", label="int64", scenario="string", excuse="string"),
        "ethics_justice": values(group_id="int64", label="int64", scenario="string"),
        "ethics_utilitarianism": values(activity="string", baseline="string", rating="string"),
        "ethics_virtue": values(group_id="int64", label="int64", scenario="string", trait="string"),
        "mmlu": {"question": text, "subject": text, "choices": Sequence(text), "answer": ClassLabel(names=["A", "B", "C", "D"])},
        "gsm8k": dict.fromkeys(("question", "answer"), text),
        "mathqa": dict.fromkeys(_MATHQA, text),
        "squad_v2": {"id": text, "title": text, "context": text, "question": text,
                     "answers": Sequence({"text": text, "answer_start": Value("int32")})},
        "boolq": {"question": text, "passage": text, "idx": Value("int32"), "label": ClassLabel(names=["False", "True"])},
    }[reader]


# reader name (benchmarks.yaml) -> file -> rows of the hub dataset
READERS: dict[str, Callable[[Path, str | None], list[dict[str, Any]]]] = {
    f.__name__: f for f in (truthfulqa_mc, truthfulqa_gen, ethics_commonsense, ethics_deontology, ethics_justice,
                            ethics_utilitarianism, ethics_virtue, mmlu, gsm8k, mathqa, squad_v2, boolq)
}
