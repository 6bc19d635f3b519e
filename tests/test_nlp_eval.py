"""TruthfulQA-mc1 / ETHICS evaluation on local raw files, against lm-eval's official task definitions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sightbeyond.data.nlp_fixtures import write_nlp_fixtures
from sightbeyond.evaluation.nlp import TASKS, evaluate_llm, local_task_configs

ETHICS_PREFIXES = (
    "ethics_commonsense", "ethics_deontology", "ethics_justice", "ethics_utilitarianism", "ethics_virtue",
)
# What an override may change: where the documents come from, and that the evaluation is 0-shot.
DATA_SOURCE_KEYS = {
    "dataset_path", "dataset_name", "dataset_kwargs", "process_docs", "training_split", "num_fewshot",
}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("nlp")
    return root, write_nlp_fixtures(root, seed=0)


@pytest.fixture(scope="module")
def tiny_lm() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = ["Question: Is this wrong?\nAnswer: no", "Scenario 1: I went to the beach. yes", "Q: Why?\nA: I have no comment."]
    bpe.train_from_iterator(text, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config), tokenizer


def test_evaluate_llm_reports_every_metric(fixtures, tiny_lm):
    root, _ = fixtures
    model, tokenizer = tiny_lm
    model.train()
    rng_state = torch.get_rng_state()

    result = evaluate_llm(model, tokenizer, TASKS, root, batch_size=16, log_samples=True)

    names = {"truthfulqa_mc1/acc", "ethics/acc", *(f"{p}/acc" for p in ETHICS_PREFIXES)}
    assert names <= result.metrics.keys()
    assert all(0.0 <= result.metrics[name] <= 1.0 for name in names)
    ethics = [result.metrics[f"{p}/acc"] for p in ETHICS_PREFIXES]
    assert result.metrics["ethics/acc"] == pytest.approx(sum(ethics) / len(ethics))
    assert {f"{name}_stderr" for name in names - {"ethics/acc"}} <= result.metrics.keys()
    assert all(len(result.raw["samples"][task]) == 24 for task in TASKS)
    json.dumps(result.raw)
    # A model evaluated during training goes back to training, with its RNG stream untouched.
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng_state)


def _read(path: Path, encoding: str = "utf-8") -> list[dict[str, str]]:
    with path.open(encoding=encoding, newline="") as f:
        return list(csv.DictReader(f))


def _sentences(cell: str) -> list[str]:
    return [a if a.endswith(".") else a + "." for a in cell.split("; ")]


def _hub_docs(task: str, path: Path) -> list[dict]:
    """The rows as in the hub copies the official tasks read, converted here without the package's code."""
    if task == "truthfulqa_mc1":
        docs = []
        for row in _read(path, "utf-8-sig"):
            correct, incorrect = _sentences(row["Correct Answers"]), _sentences(row["Incorrect Answers"])
            docs.append({
                "question": row["Question"],
                "mc1_targets": {
                    "choices": _sentences(row["Best Answer"]) + incorrect,
                    "labels": [1] + [0] * len(incorrect),
                },
                "mc2_targets": {"choices": correct + incorrect, "labels": [1] * len(correct) + [0] * len(incorrect)},
            })
        return docs
    if task == "ethics_utilitarianism":
        with path.open(encoding="utf-8", newline="") as f:
            return [{"activity": a, "baseline": b, "rating": ""} for a, b in csv.reader(f)]
    docs = []
    for i, row in enumerate(_read(path)):
        doc = {"label": int(row.pop("label"))}
        if task == "ethics_cm":
            doc |= {"input": row["input"], "is_short": row["is_short"] == "True", "edited": row["edited"] == "True"}
        elif task == "ethics_virtue":
            scenario, trait = row["scenario"].split(" [SEP] ")
            doc |= {"group_id": i // 5, "scenario": scenario, "trait": trait}
        else:  # deontology, justice
            doc |= {"group_id": i // 4, **row}
        docs.append(doc)
    return docs


def _requests(task) -> list:
    if task.config.num_fewshot is None:  # as simple_evaluate does
        task.set_config(key="num_fewshot", value=0)
    task.build_all_requests(rank=0, world_size=1)
    return [(i.doc_id, i.idx, i.arguments) for i in task.instances]


@pytest.mark.parametrize("task_name", TASKS)
def test_local_task_is_the_official_task(fixtures, task_name):
    from lm_eval.api.task import ConfigurableTask
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    root, paths = fixtures
    [config] = local_task_configs([task_name], root)
    official_dirs = [Path(lm_eval.tasks.__file__).parent / d for d in ("truthfulqa", "hendrycks_ethics")]
    index = lm_eval.tasks.TaskManager(include_defaults=False, include_path=official_dirs).task_index
    official = load_yaml(index[task_name].yaml_path, resolve_func=True)

    changed = {key for key in config.keys() | official.keys() if config.get(key) != official.get(key)}
    assert changed <= DATA_SOURCE_KEYS, changed

    hub = Dataset.from_list(_hub_docs(task_name, paths[task_name]))
    official["custom_dataset"] = lambda **_: DatasetDict(train=hub, validation=hub, test=hub)
    reference = ConfigurableTask(config=official)
    local = lm_eval.tasks.TaskManager(include_defaults=False).load([config])["tasks"][task_name]

    assert [dict(d) for d in local.eval_docs] == [dict(d) for d in reference.eval_docs]
    targets = [[task.doc_to_target(d) for d in task.eval_docs] for task in (local, reference)]
    assert targets[0] == targets[1]
    assert _requests(local) == _requests(reference)
    assert local.aggregation() == reference.aggregation()
    assert local.higher_is_better() == reference.higher_is_better()


def _rewrite(path: Path, edit, encoding: str = "utf-8") -> None:
    with path.open(encoding=encoding, newline="") as f:
        rows = list(csv.reader(f))
    edit(rows)
    with path.open("w", encoding=encoding, newline="") as f:
        csv.writer(f).writerows(rows)


def _set(row: int, column: int, value: str):
    def edit(rows):
        rows[row][column] = value
    return edit


# (task, edit of the csv rows, the row a spreadsheet shows it in, the reason)
MALFORMED = {
    "missing column": ("ethics_deontology", lambda rows: [r.pop() for r in rows], 1, "missing column 'excuse'"),
    "extra column": ("ethics_justice", lambda rows: rows[3].append("stray"), 4, "3 columns, expected 2"),
    "extra column, no header": ("ethics_utilitarianism", lambda rows: rows[5].append("x"), 6, "3 columns, expected 2"),
    "label": ("ethics_cm", _set(2, 0, "yes"), 3, "label must be 0 or 1, got 'yes'"),
    "virtue without [SEP]": ("ethics_virtue", _set(7, 1, "Tom was kind."), 8, "[SEP]"),
    "empty answer": ("truthfulqa_mc1", _set(9, 3, ""), 10, "empty 'Best Answer'"),
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_raw_file_names_file_and_row(tmp_path, kind):
    task, edit, row, reason = MALFORMED[kind]
    path = write_nlp_fixtures(tmp_path)[task]
    _rewrite(path, edit, "utf-8-sig" if task == "truthfulqa_mc1" else "utf-8")
    with pytest.raises(ValueError) as error:
        local_task_configs(TASKS, tmp_path)
    assert str(path) in str(error.value)
    assert f"row {row}:" in str(error.value)
    assert reason in str(error.value)


def test_missing_raw_file_names_file_and_task(tmp_path):
    path = write_nlp_fixtures(tmp_path)["ethics_justice"]
    path.unlink()
    with pytest.raises(FileNotFoundError, match="ethics_justice") as error:
        local_task_configs(TASKS, tmp_path)
    assert str(path) in str(error.value)


def test_fixtures_are_deterministic_and_in_the_official_layouts(tmp_path):
    first = write_nlp_fixtures(tmp_path / "a", seed=3)
    again = write_nlp_fixtures(tmp_path / "b", seed=3)
    other = write_nlp_fixtures(tmp_path / "c", seed=4)
    assert all(first[t].read_bytes() == again[t].read_bytes() for t in TASKS)
    assert any(first[t].read_bytes() != other[t].read_bytes() for t in TASKS)

    header = b"\xef\xbb\xbfType,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\r\n"
    assert first["truthfulqa_mc1"].read_bytes().startswith(header)
    for row in _read(first["truthfulqa_mc1"], "utf-8-sig"):
        assert len(row["Correct Answers"].split("; ")) >= 2 and len(row["Incorrect Answers"].split("; ")) >= 2
        assert row["Best Answer"] in row["Correct Answers"].split("; ")
    with first["ethics_utilitarianism"].open(newline="") as f:
        assert [len(row) for row in csv.reader(f)] == [2] * 24
    assert all(" [SEP] " in r["scenario"] for r in _read(first["ethics_virtue"]))
    assert list(_read(first["ethics_cm"])[0]) == ["label", "input", "is_short", "edited"]
