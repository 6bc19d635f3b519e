"""Bad input is the user's to fix: exit code 2, one line naming the file, the record or row and the reason, no
traceback, and before a model loads or a run starts."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3

import pytest

from conftest import run_cli
from sightbeyond.config import ConfigError
from sightbeyond.embedded.nlp_fixtures import write_nlp_fixtures


def failed(proc) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    return [line for line in out.splitlines() if " error: " in line][-1]


@pytest.fixture
def malformed_benchmarks(tmp_path):
    paths = write_nlp_fixtures(tmp_path / "benchmarks", seed=0, n_truthfulqa=4, n_ethics=4)
    bad = paths["ethics/commonsense/cm_test.csv"]
    bad.write_text(bad.read_text().replace("\n", "\nnot-a-label,oops,False,False\n", 1))
    return tmp_path / "benchmarks", bad


def test_eval_nlp_names_a_malformed_benchmark_file_before_the_model_loads(tiny_project, malformed_benchmarks):
    root = tiny_project()
    data_root, bad = malformed_benchmarks
    line = failed(run_cli(root, "-S", "eval_nlp.source=local", "-S", f"eval_nlp.local_root={data_root}", "eval_nlp",
                          "--model", "base", wait=False))
    assert f"{bad}: row 2: label must be 0 or 1, got 'not-a-label'" in line
    assert not (root / "mlflow.db").exists() or not sqlite3.connect(root / "mlflow.db").execute(
        "select count(*) from runs").fetchone()[0]


def test_stage2_checks_its_step_wise_files_before_the_model_loads_and_leaves_no_run(tiny_project, malformed_benchmarks):
    root = tiny_project()
    data_root, bad = malformed_benchmarks
    line = failed(run_cli(root, "-S", "eval_nlp.source=local", "-S", f"eval_nlp.local_root={data_root}", "stage2",
                          "--tuning", "lora", "--modality", "text", wait=False))
    assert f"{bad}: row 2:" in line
    assert not list(root.glob("checkpoints/**/run.json")) and not list(root.glob("models/**/stage2/**"))


def test_prepare_that_skips_every_record_says_why(tiny_project, tmp_path):
    root = tiny_project()
    source = tmp_path / "llava"
    source.mkdir()
    record = {"id": "a", "image": "missing.jpg", "conversations": [{"from": "human", "value": "<image>\nHi"},
                                                                   {"from": "gpt", "value": "Hello."}]}
    (source / "llava_instruct_80k.json").write_text(json.dumps([record]))
    line = failed(run_cli(root, "-S", f"prepare.instruct_dir={source}", "-S", f"prepare.instruct_images={source}",
                          "-S", "prepare.on_bad_record=skip", "prepare", "--split", "instruct", wait=False))
    assert "llava_instruct_80k.json: no usable record of 1 read; every one skipped" in line
    # the earlier output stays as it was, with nothing half-written beside it
    assert (root / "data/prepared/full/text").exists() and not (root / "data/prepared/full/image").exists()
    assert not list((root / "data/prepared").glob(".*"))


def test_an_unusable_mlflow_store_is_named(tiny_project, tmp_path):
    root = tiny_project()
    store = tmp_path / "no-such-folder" / "mlflow.db"
    line = failed(run_cli(root, "eval_nlp", "--model", "base", wait=False, store=f"sqlite:///{store}"))
    assert f"{store}: the MLflow store (or its folder) is read-only" in line


def test_advice_for_missing_weights_is_one_the_user_can_follow(params_for, monkeypatch):
    from sightbeyond.model.weights import MissingWeightsError, resolve_llm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as hub_id:
        resolve_llm(params_for(backbone="nobody-here/no-model-7b"))
    assert "`-S backbone=/path/to/no-model-7b`" in str(hub_id.value) and "backbones.nobody-here" not in str(hub_id.value)
    with pytest.raises(MissingWeightsError, match=r"set backbones\.llama2\.local_path"):
        resolve_llm(params_for(backbone="llama2"))
    with pytest.raises(MissingWeightsError, match=r"'0/' is neither a local directory nor a valid hub id"):
        resolve_llm(params_for(backbone="0/"))  # found by the Hypothesis test: huggingface_hub's own error escaped


def test_a_global_batch_that_does_not_divide_names_the_preset(params_for):
    with pytest.raises(ConfigError, match=r"presets\.tiny\.stage2: global_batch_size 20 is not a multiple"):
        params_for(**{"presets.tiny.stage2.global_batch_size": 20, "presets.tiny.stage2.per_device_train_batch_size": 8})
    params = params_for(**{"presets.tiny.stage2.global_batch_size": 24, "presets.tiny.stage2.per_device_train_batch_size": 8})
    with pytest.raises(ConfigError, match=r"presets\.tiny\.stage2: .* x 2 processes"):
        params.hparams.stage2.grad_accum(2, "presets.tiny.stage2")


def _write_many(path: str, worker: int) -> None:
    from sightbeyond.io import write_json

    for i in range(200):
        write_json(path, {"worker": worker, "i": i})


def test_concurrent_writers_of_one_result_file_all_succeed(tmp_path):
    target = tmp_path / "results" / "cell.json"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(str(target), w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert json.loads(target.read_text())["i"] == 199 and list(target.parent.iterdir()) == [target]
