"""`process_docs` for the local task overrides: raw release rows -> the hub schema lm-eval's tasks read.

lm-eval loads this file by path (`!function local_docs.<fn>` in the YAMLs next to it), so it imports
nothing from the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets


def _map(dataset: datasets.Dataset, convert) -> datasets.Dataset:
    # Drop the raw columns so the docs carry exactly the hub's fields.
    return dataset.map(convert, with_indices=True, remove_columns=dataset.column_names)


def _sentence(answer: str) -> str:
    # The TruthfulQA authors' own loader (utilities.format_best / split_multi_answer) closes every
    # answer with a period, which is how the choices read in the hub's multiple-choice file.
    answer = answer.strip()
    return answer if answer.endswith(".") else answer + "."


def _answers(cell: str) -> list[str]:
    return [_sentence(a) for a in cell.split(";") if a.strip()]


def truthfulqa_mc(dataset: datasets.Dataset) -> datasets.Dataset:
    """TruthfulQA.csv -> `truthful_qa/multiple_choice`: mc1 = Best Answer (first) vs the Incorrect Answers,
    mc2 = all Correct Answers vs the Incorrect Answers."""

    def convert(row: dict[str, Any], _: int) -> dict[str, Any]:
        correct, incorrect = _answers(row["Correct Answers"]), _answers(row["Incorrect Answers"])
        return {
            "question": row["Question"],
            "mc1_targets": {
                "choices": [_sentence(row["Best Answer"]), *incorrect],
                "labels": [1] + [0] * len(incorrect),
            },
            "mc2_targets": {
                "choices": [*correct, *incorrect],
                "labels": [1] * len(correct) + [0] * len(incorrect),
            },
        }

    return _map(dataset, convert)


def ethics_commonsense(dataset: datasets.Dataset) -> datasets.Dataset:
    def convert(row: dict[str, Any], _: int) -> dict[str, Any]:
        return {
            "label": int(row["label"]),
            "input": row["input"],
            # pandas may or may not have parsed True/False already.
            "is_short": str(row["is_short"]) == "True",
            "edited": str(row["edited"]) == "True",
        }

    return _map(dataset, convert)


# The hub's loading script numbers the groups of scenarios that share a prompt: deontology and
# justice come in groups of 4, virtue in groups of 5.


def ethics_deontology(dataset: datasets.Dataset) -> datasets.Dataset:
    def convert(row: dict[str, Any], i: int) -> dict[str, Any]:
        return {"group_id": i // 4, "label": int(row["label"]), "scenario": row["scenario"], "excuse": row["excuse"]}

    return _map(dataset, convert)


def ethics_justice(dataset: datasets.Dataset) -> datasets.Dataset:
    def convert(row: dict[str, Any], i: int) -> dict[str, Any]:
        return {"group_id": i // 4, "label": int(row["label"]), "scenario": row["scenario"]}

    return _map(dataset, convert)


def ethics_virtue(dataset: datasets.Dataset) -> datasets.Dataset:
    def convert(row: dict[str, Any], i: int) -> dict[str, Any]:
        scenario, trait = row["scenario"].split(" [SEP] ")
        return {"group_id": i // 5, "label": int(row["label"]), "scenario": scenario, "trait": trait}

    return _map(dataset, convert)


def ethics_utilitarianism(dataset: datasets.Dataset) -> datasets.Dataset:
    # The release has no ratings; the hub fills the field with an empty string.
    def convert(row: dict[str, Any], _: int) -> dict[str, Any]:
        return {"activity": row["activity"], "baseline": row["baseline"], "rating": ""}

    return _map(dataset, convert)
