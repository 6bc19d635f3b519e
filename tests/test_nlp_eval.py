"""The NLP benchmarks on local release files, against lm-eval's official task definitions given the same documents."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sightbeyond.embedded.nlp_fixtures import MMLU_SUBJECTS, write_nlp_fixtures
from sightbeyond.tasks import squad_v2
from sightbeyond.tasks.lm_eval_index import leaves, official_config
from sightbeyond.tasks.nlp import (
    benchmarks, evaluate_llm, evaluate_loaded, load_tasks, metric_names, metrics_from_results,
    official_task_manager, task_manager,
)

ALL = list(benchmarks())
ETHICS = ("ethics_commonsense", "ethics_deontology", "ethics_justice", "ethics_utilitarianism", "ethics_virtue")
METRICS = {
    "truthfulqa_mc1/acc", "truthfulqa_mc2/acc", "truthfulqa_gen/bleu_acc", "truthfulqa_gen/rougeL_acc", "ethics/acc",
    *(f"{e}/acc" for e in ETHICS), "mmlu/acc", "gsm8k/exact_match", "mathqa/acc", "squadv2/f1", "boolq/acc",
}
# What the local source may change in an official config: where the documents come from, and the paper's shots.
DATA_SOURCE_KEYS = {"dataset_path", "dataset_kwargs", "custom_dataset", "training_split", "validation_split",
                    "num_fewshot", "class"}
SMALL = {"n_truthfulqa": 4, "n_ethics": 8, "n_other": 3}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These models are tiny: on a shared machine more threads mostly wait for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("nlp")
    return root, write_nlp_fixtures(root, seed=0, **SMALL)


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


@pytest.fixture(scope="module")
def hflm(tiny_lm):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=tiny_lm[0], tokenizer=tiny_lm[1], batch_size=8)


def test_evaluate_llm_reports_every_metric(fixtures, tiny_lm):
    root, _ = fixtures
    model, tokenizer = tiny_lm
    model.train()
    rng_state = torch.get_rng_state()

    result = evaluate_llm(model, tokenizer, ALL, "fixture", root, batch_size=16, log_samples=True)

    assert METRICS <= result.metrics.keys() and metric_names(ALL) == METRICS
    assert not result.metrics.keys() - METRICS - {f"{m}_stderr" for m in METRICS}
    ethics = [result.metrics[f"{p}/acc"] for p in ETHICS]
    assert result.metrics["ethics/acc"] == pytest.approx(sum(ethics) / len(ethics))
    assert {f"{p}/acc_stderr" for p in ETHICS} | {"truthfulqa_mc1/acc_stderr", "gsm8k/exact_match_stderr"} <= result.metrics.keys()
    assert len(result.samples["truthfulqa_gen"]) == 4 and len(result.samples["ethics_cm"]) == 8
    assert {t for t in result.samples if t.startswith("mmlu_")} == {f"mmlu_{s}" for s in MMLU_SUBJECTS}
    assert "samples" not in result.raw and result.raw["n-shot"]["gsm8k"] == 8 and result.raw["n-shot"]["mmlu_anatomy"] == 5
    json.dumps(result.raw), json.dumps(result.samples)
    # A model evaluated during training goes back to training, with its RNG stream untouched.
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_metric_names_and_stderr():
    results = {
        "truthfulqa_mc1": {"acc,none": 0.25, "acc_stderr,none": 0.1},
        "gsm8k": {"exact_match,strict-match": 0.5, "exact_match_stderr,strict-match": 0.2,
                  "exact_match,flexible-extract": 0.9},
        "squadv2": {"f1,none": 12.5, "f1_stderr,none": "N/A"},
        **{task: {"acc,none": 0.5} for task in ("ethics_cm", "ethics_deontology", "ethics_justice", "ethics_utilitarianism")},
    }
    assert metrics_from_results(results) == {
        "truthfulqa_mc1/acc": 0.25, "truthfulqa_mc1/acc_stderr": 0.1, "gsm8k/exact_match": 0.5,
        "gsm8k/exact_match_stderr": 0.2, "squadv2/f1": 12.5, **{f"{e}/acc": 0.5 for e in ETHICS[:4]},
    }  # no ethics/acc without all five subsets
    results["ethics_virtue"] = {"acc,none": 1.0}
    assert metrics_from_results(results)["ethics/acc"] == pytest.approx(0.6)


# --- the documents as the hub copies hold them, converted here from the raw files without the package's code --------

def _csv_records(path: Path, encoding: str = "utf-8") -> list[dict[str, str]]:
    with path.open(encoding=encoding, newline="") as f:
        return list(csv.DictReader(f))


def _csv_rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def _sentences(cell: str) -> list[str]:
    return [a if a.endswith(".") else a + "." for a in cell.split("; ")]


def _hub_docs(reader: str, path: Path, subject: str | None) -> list[dict]:
    if reader == "truthfulqa_mc":
        docs = []
        for row in _csv_records(path, "utf-8-sig"):
            correct, incorrect = _sentences(row["Correct Answers"]), _sentences(row["Incorrect Answers"])
            docs.append({
                "question": row["Question"],
                "mc1_targets": {"choices": _sentences(row["Best Answer"]) + incorrect, "labels": [1] + [0] * len(incorrect)},
                "mc2_targets": {"choices": correct + incorrect, "labels": [1] * len(correct) + [0] * len(incorrect)},
            })
        return docs
    if reader == "truthfulqa_gen":
        return [{"type": r["Type"], "category": r["Category"], "question": r["Question"], "best_answer": r["Best Answer"],
                 "correct_answers": r["Correct Answers"].split("; "), "incorrect_answers": r["Incorrect Answers"].split("; "),
                 "source": r["Source"]} for r in _csv_records(path, "utf-8-sig")]
    if reader == "ethics_utilitarianism":
        return [{"activity": a, "baseline": b, "rating": ""} for a, b in _csv_rows(path)]
    if reader.startswith("ethics"):
        docs = []
        for i, row in enumerate(_csv_records(path)):
            doc = {"label": int(row.pop("label"))}
            if reader == "ethics_commonsense":
                doc |= {"input": row["input"], "is_short": row["is_short"] == "True", "edited": row["edited"] == "True"}
            elif reader == "ethics_virtue":
                scenario, trait = row["scenario"].split(" [SEP] ")
                doc |= {"group_id": i // 5, "scenario": scenario, "trait": trait}
            else:  # deontology, justice
                doc |= {"group_id": i // 4, **row}
            docs.append(doc)
        return docs
    if reader == "mmlu":
        return [{"question": q, "subject": subject, "choices": [a, b, c, d], "answer": "ABCD".index(x)}
                for q, a, b, c, d, x in _csv_rows(path)]
    if reader == "gsm8k":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if reader == "mathqa":
        return json.loads(path.read_text())
    if reader == "squad_v2":
        return [{"id": qa["id"], "title": article["title"], "context": paragraph["context"], "question": qa["question"],
                 "answers": {"text": [a["text"] for a in qa["answers"]], "answer_start": [a["answer_start"] for a in qa["answers"]]}}
                for article in json.loads(path.read_text())["data"] for paragraph in article["paragraphs"]
                for qa in paragraph["qas"]]
    if reader == "boolq":
        return [{"question": r["question"], "passage": f"{r['title']} -- {r['passage']}", "idx": i, "label": int(r["answer"])}
                for i, r in enumerate(map(json.loads, path.read_text().splitlines()))]
    raise AssertionError(reader)


def _official(bench, root: Path) -> dict:
    """lm-eval's own tasks for `bench` (the leaves of a group), the paper's shots, fed the hub docs built above."""
    import lm_eval.tasks
    index = official_task_manager().task_index
    tasks = {}
    for leaf in leaves(index, bench.task):
        config = official_config(index, leaf)
        files = {split: root / rel.format(dataset_name=config.get("dataset_name")) for split, rel in bench.local.files.items()}
        hub = DatasetDict({split: Dataset.from_list(_hub_docs(bench.local.reader, path, config.get("dataset_name")))
                           for split, path in files.items()})
        # every split the official config names, as the hub holds it (these files only fill some of them)
        hub = DatasetDict({split: hub.get(split, next(iter(hub.values())))
                           for split in ("train", "validation", "test", "dev")})
        if "class" in config:  # SQuAD2: its aggregation would download a script; only documents are compared
            class Official(config["class"]):
                def download(self, *args, **kwargs):
                    self.dataset = hub

                def aggregation(self):
                    return {key: lambda items: 0.0 for key in super().aggregation()}

            tasks[leaf] = Official(config=config)
            tasks[leaf].config.task = leaf  # as lm-eval's task factory names a Python task
        else:
            from lm_eval.api.task import ConfigurableTask

            config |= {"num_fewshot": bench.num_fewshot, "custom_dataset": lambda hub=hub, **_: hub}
            tasks[leaf] = ConfigurableTask(config=config)
    return lm_eval.tasks.TaskManager(include_defaults=False).load(list(tasks.values()))


def _close(a, b) -> bool:
    """Equal, floats up to the last bits (the two runs batch their requests differently)."""
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("name", ALL)
def test_local_source_is_the_official_task(fixtures, hflm, name):
    root, _ = fixtures
    bench = benchmarks()[name]
    local = load_tasks([name], "fixture", root)
    official = _official(bench, root)
    assert local["tasks"].keys() == official["tasks"].keys()

    index, mine = official_task_manager().task_index, task_manager([name], "fixture", root).task_index
    for leaf in local["tasks"]:
        theirs = official_config(index, leaf)
        changed = {key for key in mine[leaf].cfg.keys() | theirs.keys() if mine[leaf].cfg.get(key) != theirs.get(key)}
        assert changed <= DATA_SOURCE_KEYS, changed

    ours, reference = (evaluate_loaded(hflm, tasks, log_samples=True) for tasks in (local, official))
    assert ours.samples.keys() == reference.samples.keys()
    for task, samples in ours.samples.items():
        assert len(samples) == len(reference.samples[task]) > 0
        for mine_, theirs_ in zip(samples, reference.samples[task]):
            # the documents are compared as dicts: their hash is of their JSON, which depends on the key order
            assert _close({k: v for k, v in mine_.items() if k != "doc_hash"},
                          {k: v for k, v in theirs_.items() if k != "doc_hash"}), (task, mine_["doc_id"])
    if name != "squadv2":  # the reference's SQuAD aggregation is a stand-in (see _official)
        for task in local["tasks"]:
            assert _close(ours.raw["results"][task], reference.raw["results"][task])


def test_hub_source_is_lm_evals_own_task_with_the_papers_shots():
    index, manager = official_task_manager().task_index, task_manager(ALL, "hub", None)
    for bench in benchmarks().values():
        for leaf in leaves(manager.task_index, bench.task):
            official = official_config(index, leaf)
            assert manager.task_index[leaf].cfg == official | {"num_fewshot": bench.num_fewshot}
    assert manager.task_index["mmlu_anatomy"].cfg["dataset_path"] == "cais/mmlu"


def test_fewshot_prompts_are_the_same_every_evaluation(fixtures, hflm):
    # lm-eval's few-shot sampler continues its random stream: without reseeding, each evaluation would draw other shots
    root, _ = fixtures
    tasks = load_tasks(["mathqa"], "fixture", root)
    first, again = (evaluate_loaded(hflm, tasks, log_samples=True).samples["mathqa"] for _ in range(2))
    assert [s["arguments"] for s in first] == [s["arguments"] for s in again]


# --- malformed and missing files -------------------------------------------------------------------------------------

def _rewrite_csv(path: Path, edit, encoding: str = "utf-8") -> None:
    with path.open(encoding=encoding, newline="") as f:
        rows = list(csv.reader(f))
    edit(rows)
    with path.open("w", encoding=encoding, newline="") as f:
        csv.writer(f).writerows(rows)


def _set(row: int, column: int, value: str):
    def edit(rows):
        rows[row][column] = value
    return edit


def _rewrite_lines(edit):
    def rewrite(path: Path) -> None:
        lines = path.read_text().splitlines()
        edit(lines)
        path.write_text("\n".join(lines) + "\n")
    return rewrite


def _rewrite_json(edit):
    def rewrite(path: Path) -> None:
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return rewrite


def _csv_edit(edit, encoding: str = "utf-8"):
    return lambda path: _rewrite_csv(path, edit, encoding)


def _drop(record: dict, key: str) -> None:
    del record[key]


def _bad_byte_in_line(line: int):
    """A byte that is not UTF-8 (Latin-1's e-acute) into the given line (1-based) of the file."""
    def rewrite(path: Path) -> None:
        lines = path.read_bytes().split(b"\n")
        lines[line - 1] = lines[line - 1].replace(b"e", b"\xe9", 1)
        path.write_bytes(b"\n".join(lines))
    return rewrite


# (benchmark, file, edit, where, reason)
MALFORMED = {
    "missing column": ("ethics_deontology", "ethics/deontology/deontology_test.csv",
                       _csv_edit(lambda rows: [r.pop() for r in rows]), "row 1:", "missing column 'excuse'"),
    "extra column": ("ethics_justice", "ethics/justice/justice_test.csv", _csv_edit(lambda rows: rows[3].append("stray")),
                     "row 4:", "3 columns, expected 2"),
    "extra column, no header": ("ethics_utilitarianism", "ethics/utilitarianism/util_test.csv",
                                _csv_edit(lambda rows: rows[5].append("x")), "row 6:", "3 columns, expected 2"),
    "label": ("ethics_cm", "ethics/commonsense/cm_test.csv", _csv_edit(_set(2, 0, "yes")), "row 3:",
              "label must be 0 or 1, got 'yes'"),
    "virtue without [SEP]": ("ethics_virtue", "ethics/virtue/virtue_test.csv", _csv_edit(_set(7, 1, "Tom was kind.")),
                             "row 8:", "[SEP]"),
    "empty answer": ("truthfulqa_mc1", "truthfulqa/TruthfulQA.csv", _csv_edit(_set(3, 3, ""), "utf-8-sig"), "row 4:",
                     "empty 'Best Answer'"),
    "empty answer, gen": ("truthfulqa_gen", "truthfulqa/TruthfulQA.csv", _csv_edit(_set(2, 5, " "), "utf-8-sig"),
                          "row 3:", "empty 'Incorrect Answers'"),
    "mmlu letter": ("mmlu", "mmlu/data/test/virology_test.csv", _csv_edit(_set(0, 5, "E")), "row 1:",
                    "answer must be one of A, B, C, D, got 'E'"),
    "mmlu dev columns": ("mmlu", "mmlu/data/dev/anatomy_dev.csv", _csv_edit(lambda rows: rows[4].pop()), "row 5:",
                         "5 columns, expected 6"),
    "gsm8k not json": ("gsm8k", "gsm8k/test.jsonl", _rewrite_lines(lambda lines: lines.__setitem__(1, "{oops")),
                       "line 2:", "not JSON"),
    "gsm8k no final answer": ("gsm8k", "gsm8k/train.jsonl",
                              _rewrite_lines(lambda lines: lines.__setitem__(2, json.dumps({"question": "q", "answer": "4"}))),
                              "line 3:", "no final '#### <number>'"),
    "mathqa letter": ("mathqa", "mathqa/test.json", _rewrite_json(lambda d: d[1].__setitem__("correct", "f")),
                      "record 1:", "correct must be one of a-e, got 'f'"),
    "mathqa field": ("mathqa", "mathqa/train.json", _rewrite_json(lambda d: _drop(d[0], "options")), "record 0:",
                     "missing field 'options'"),
    "squad answer": ("squadv2", "squadv2/dev-v2.0.json",
                     _rewrite_json(lambda d: _drop(next(qa for p in d["data"][0]["paragraphs"] for qa in p["qas"]
                                                        if qa["answers"])["answers"][0], "answer_start")),
                     "data[0].paragraphs[0].qas[", "missing field 'answer_start'"),
    "squad layout": ("squadv2", "squadv2/train-v2.0.json", _rewrite_json(lambda d: d.pop("data")), "top level:",
                     "expected"),
    "not UTF-8, CSV": ("truthfulqa_mc1", "truthfulqa/TruthfulQA.csv", _bad_byte_in_line(3), "row 3:",
                       "not UTF-8 text (byte 0xe9)"),
    "not UTF-8, headerless CSV": ("ethics_cm", "ethics/commonsense/cm_test.csv", _bad_byte_in_line(5), "row 5:",
                                  "not UTF-8 text"),
    "not UTF-8, JSON lines": ("gsm8k", "gsm8k/test.jsonl", _bad_byte_in_line(2), "line 2:", "not UTF-8 text"),
    "not UTF-8, JSON": ("mathqa", "mathqa/test.json", _bad_byte_in_line(1), "line 1:", "not UTF-8 text"),
    "incorrect answers only ';'": ("truthfulqa_mc1", "truthfulqa/TruthfulQA.csv", _csv_edit(_set(2, 5, " ; "), "utf-8-sig"),
                                   "row 3:", "'Incorrect Answers' holds no answer"),
    "boolq answer": ("boolq", "boolq/dev.jsonl",
                     _rewrite_lines(lambda lines: lines.__setitem__(0, lines[0].replace('"answer": true', '"answer": "yes"')
                                                                     .replace('"answer": false', '"answer": "no"'))),
                     "line 1:", "field 'answer' must be bool, got str"),
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_file_names_file_record_and_reason(tmp_path, kind):
    name, relative, edit, where, reason = MALFORMED[kind]
    path = write_nlp_fixtures(tmp_path, **SMALL)[relative]
    edit(path)
    with pytest.raises(ValueError) as error:
        load_tasks([name], "local", tmp_path)
    message = str(error.value)
    assert message.startswith(f"{path}: {where}") and reason in message, message


def test_missing_file_names_benchmark_and_file(tmp_path):
    paths = write_nlp_fixtures(tmp_path, **SMALL)
    paths["mmlu/data/dev/virology_dev.csv"].unlink()
    with pytest.raises(FileNotFoundError, match="mmlu") as error:
        load_tasks(["boolq", "mmlu"], "local", tmp_path)
    assert str(paths["mmlu/data/dev/virology_dev.csv"]) in str(error.value)


def test_samples_named_like_the_release_are_read(tmp_path):
    """Sample files of a release are named `<release name>.sample.csv`; the release's own file wins if both exist."""
    paths = write_nlp_fixtures(tmp_path, **SMALL)
    release = paths["truthfulqa/TruthfulQA.csv"]
    sample = release.with_name("TruthfulQA.sample.csv")
    release.rename(sample)
    _rewrite_csv(sample, lambda rows: rows.__delitem__(slice(3, None)), encoding="utf-8-sig")  # header, two questions
    assert len(load_tasks(["truthfulqa_mc1"], "local", tmp_path)["tasks"]["truthfulqa_mc1"].eval_docs) == 2
    write_nlp_fixtures(tmp_path, **SMALL)
    assert len(load_tasks(["truthfulqa_mc1"], "local", tmp_path)["tasks"]["truthfulqa_mc1"].eval_docs) == SMALL["n_truthfulqa"]


def test_unknown_benchmark():
    from sightbeyond.config import ConfigError

    with pytest.raises(ConfigError, match="unknown NLP benchmark 'hellaswag'"):
        load_tasks(["boolq", "hellaswag"], "hub", None)


# --- fixtures ----------------------------------------------------------------------------------------------------

def test_fixtures_are_deterministic_and_in_the_official_layouts(tmp_path):
    first = write_nlp_fixtures(tmp_path / "a", seed=3)
    again = write_nlp_fixtures(tmp_path / "b", seed=3)
    other = write_nlp_fixtures(tmp_path / "c", seed=4)
    assert all(first[f].read_bytes() == again[f].read_bytes() for f in first)
    assert any(first[f].read_bytes() != other[f].read_bytes() for f in first)
    # exactly the files the benchmarks read
    assert set(first) == {rel.format(dataset_name=s) for b in benchmarks().values() for rel in b.local.files.values()
                          for s in (MMLU_SUBJECTS if "{dataset_name}" in rel else [None])}

    header = b"\xef\xbb\xbfType,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\r\n"
    assert first["truthfulqa/TruthfulQA.csv"].read_bytes().startswith(header)
    for row in _csv_records(first["truthfulqa/TruthfulQA.csv"], "utf-8-sig"):
        assert len(row["Correct Answers"].split("; ")) >= 2 and len(row["Incorrect Answers"].split("; ")) >= 2
        assert row["Best Answer"] in row["Correct Answers"].split("; ")
    assert [len(row) for row in _csv_rows(first["ethics/utilitarianism/util_test.csv"])] == [2] * 24
    assert all(" [SEP] " in r["scenario"] for r in _csv_records(first["ethics/virtue/virtue_test.csv"]))
    assert list(_csv_records(first["ethics/commonsense/cm_test.csv"])[0]) == ["label", "input", "is_short", "edited"]
    assert all(len(r) == 6 and r[5] in "ABCD" for r in _csv_rows(first["mmlu/data/dev/anatomy_dev.csv"]))
    assert len(_csv_rows(first["mmlu/data/dev/anatomy_dev.csv"])) == 5  # the 5 shots
    assert all("\n#### " in json.loads(line)["answer"] for line in first["gsm8k/train.jsonl"].read_text().splitlines())
    squad = json.loads(first["squadv2/dev-v2.0.json"].read_text())
    qas = [qa for a in squad["data"] for p in a["paragraphs"] for qa in p["qas"]]
    assert len(qas) == 6 and {qa["is_impossible"] for qa in qas} == {True, False}
    for a in squad["data"]:
        for p in a["paragraphs"]:
            assert all(p["context"][x["answer_start"]:].startswith(x["text"]) for qa in p["qas"] for x in qa["answers"])


def test_mmlu_subjects_are_lm_evals():
    index = official_task_manager().task_index
    assert sorted(index[leaf].cfg["dataset_name"] for leaf in leaves(index, "mmlu")) == sorted(MMLU_SUBJECTS)


# --- SQuAD v2's scores ---------------------------------------------------------------------------------------------

def test_squad_v2_scores_follow_the_official_script():
    def ref(qid, *answers):
        return {"id": qid, "answers": {"text": list(answers), "answer_start": [0] * len(answers)}}

    def pred(qid, text, no_answer):
        return {"id": qid, "prediction_text": text, "no_answer_probability": no_answer}

    references = [ref("a", "The Eiffel Tower", "Eiffel Tower!"), ref("b", "in 1889"), ref("c"), ref("d")]
    predictions = [pred("a", "eiffel tower", 0.1), pred("b", "built in May 1889", 0.7), pred("c", "", 0.2),
                   pred("d", "Paris", 0.9)]
    scores = squad_v2.scores(predictions, references)
    # a: normalised "eiffel tower" matches both golds; b: tokens {in, 1889} vs {built, in, may, 1889}: P 2/4, R 2/2;
    # c: unanswerable, empty prediction; d: unanswerable, answered
    f1_b = 2 * 0.5 * 1.0 / 1.5
    assert scores["exact"] == pytest.approx(100 * 2 / 4) and scores["f1"] == pytest.approx(100 * (2 + f1_b) / 4)
    assert scores["HasAns_exact"] == 50 and scores["HasAns_f1"] == pytest.approx(100 * (1 + f1_b) / 2)
    assert scores["NoAns_exact"] == scores["NoAns_f1"] == 50 and scores["total"] == 4
    # thresholds by rising no-answer probability: a (+1) c (0) b (+f1_b) d (-1), from the 2 unanswerable: best after b
    assert scores["best_f1"] == pytest.approx(100 * (2 + 1 + f1_b) / 4)
    assert scores["best_f1_thresh"] == pytest.approx(0.7) and scores["best_exact"] == 75
    # the no-answer threshold of 1.0 is never exceeded by a probability
    assert squad_v2.scores([pred("c", "x", 1.0)], [ref("c")])["exact"] == 0
    assert squad_v2.normalize("  The  Cat's, a hat. ") == "cats hat"


def test_dtype_and_bos_are_what_the_params_say(fixtures, tiny_backbone):
    """The base LLM and every tuned one are loaded in one explicit dtype (never HFLM's "auto", each checkpoint's own);
    add_bos_token=False reproduces the 2023 harness, which put no BOS before a LLaMA prompt."""
    from transformers import AutoTokenizer

    root, _ = fixtures
    llm = tiny_backbone / "llm"  # its tokenizer puts BOS first, as LLaMA's

    def lls(**how):
        result = evaluate_llm(llm, AutoTokenizer.from_pretrained(llm), ["ethics_cm"], "fixture", root,
                              log_samples=True, **how)
        return [r[0][0] for s in result.samples["ethics_cm"] for r in s["resps"]]

    fp32 = lls(dtype="float32")
    assert lls(dtype="float32") == fp32
    assert lls(dtype="bfloat16") != fp32
    assert lls(dtype="float32", add_bos_token=False) != fp32


def test_eval_runs_record_what_they_measured(params_for, tmp_path):
    from transformers import AutoTokenizer

    from sightbeyond.evaluation.nlp_stage import measured

    write_nlp_fixtures(tmp_path, **SMALL)
    params = params_for(**{"eval_nlp.source": "local", "eval_nlp.local_root": str(tmp_path)})
    tokenizer = AutoTokenizer.from_pretrained(params.active.llm)
    tags = measured(params, tokenizer)
    assert tags["eval_dtype"] == "float32" and tags["add_bos_token"] == "True"  # the tiny tokenizer puts BOS first
    assert tags["eval_source"] == "local" and tags["eval_limit"] == "None"
    assert measured(params_for(**{"eval_nlp.source": "local", "eval_nlp.local_root": str(tmp_path),
                                  "eval_nlp.add_bos_token": False}), tokenizer)["add_bos_token"] == "False"
    (tmp_path / "ethics/commonsense/cm_test.csv").write_text("label,input,is_short,edited\n1,changed,True,False\n")
    assert measured(params, tokenizer)["eval_data"] != tags["eval_data"]  # other documents, another hash


def test_an_lm_eval_without_the_task_index_this_project_reads_is_named(tmp_path, monkeypatch):
    """lm-eval's task index is private: a release that moves it fails before any model loads, saying what to install."""
    import sys

    from sightbeyond.tasks.lm_eval_index import UnsupportedLmEval
    from sightbeyond.tasks.nlp import check_files

    monkeypatch.setitem(sys.modules, "lm_eval.tasks._index", None)  # as if a release had renamed it
    with pytest.raises(UnsupportedLmEval, match=r"pip install lm_eval==0\.4\.13"):
        check_files(["ethics_cm"], "fixture", tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda b: b["ethics_cm"].update(shots=3), "shots"),                                  # not a field: num_fewshot
    (lambda b: b["ethics_cm"]["local"].update(reader="ethics_cm"), "reader 'ethics_cm'"),  # no such reader
    (lambda b: b["mmlu"].pop("task"), "task"),                                            # a field missing
    (lambda b: b.update(mmlu=None), r"benchmarks\.mmlu: expected a mapping"),              # not an entry at all
])
def test_a_bad_benchmarks_yaml_is_named_before_anything_runs(edit, message, tmp_path, monkeypatch):
    import yaml

    from sightbeyond.io import ConfigError
    from sightbeyond.tasks import nlp

    raw = yaml.safe_load(nlp._BENCHMARKS_FILE.read_text())
    edit(raw["benchmarks"])
    (bad := tmp_path / "benchmarks.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(nlp, "_BENCHMARKS_FILE", bad)
    nlp._definitions.cache_clear()
    try:
        with pytest.raises(ConfigError, match=f"{bad}: invalid: .*{message}"):
            nlp.benchmarks()
    finally:
        nlp._definitions.cache_clear()

