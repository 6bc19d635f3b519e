"""A stage-2 run killed with SIGKILL and rerun the same way resumes into the same MLflow run and ends where an
uninterrupted run ends."""

from __future__ import annotations

import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli

STAGE2 = ("stage2", "--tuning", "lora", "--modality", "text")
SETTINGS = {"presets.tiny.stage2.per_device_train_batch_size": 4, "presets.tiny.stage2.global_batch_size": 4,
            "stage2.save_steps": 5, "presets.tiny.stage2.eval_steps": 10}  # checkpoints on logging steps: same loss windows


TIMING = ("train_runtime", "train_samples_per_second", "train_steps_per_second")  # wall-clock: never equal


def history(root) -> dict[str, list[tuple[int, float]]]:
    """Every training metric of the cell's one run, step by step (system metrics and timings aside)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # the rerun continued the killed run
    assert runs[0].info.status == "FINISHED"
    keys = [k for k in runs[0].data.metrics if not k.startswith("system/") and k not in TIMING]
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, key)) for key in keys}


def timing(root) -> dict[str, float]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name != "Default"]
    [run] = client.search_runs([experiment.experiment_id])
    return {key: run.data.metrics[key] for key in TIMING}


def logged(root, key: str, step: int) -> bool:
    import sqlite3

    try:
        with sqlite3.connect(root / "mlflow.db", timeout=1) as db:
            return bool(db.execute("select 1 from metrics where key = ? and step = ?", (key, step)).fetchone())
    except sqlite3.Error:
        return False


def adapter(root):
    return load_file(str(root / "models/tiny/stage2/full/lora-text/adapter_model.safetensors"))


UNINTERRUPTED: dict = {}
KILL_WHEN = {  # after a complete checkpoint; after step 15's logs and before (or while) checkpoint 15 is written
    "after checkpoint 10": lambda root, work: (work / "checkpoint-10/trainer_state.json").exists(),
    "between step 15's log and its checkpoint": lambda root, work: logged(root, "loss", 15),
}


@pytest.mark.slow
@pytest.mark.parametrize("when", KILL_WHEN)
def test_a_killed_run_resumes_into_the_same_run_and_ends_as_an_uninterrupted_one(tiny_project, when):
    if not UNINTERRUPTED:  # one uninterrupted run serves every kill point
        straight = tiny_project("straight", **SETTINGS)
        run_cli(straight, *STAGE2)
        UNINTERRUPTED.update(history=history(straight), adapter=adapter(straight))

    killed = tiny_project("killed", **SETTINGS)
    proc = run_cli(killed, *STAGE2, wait=False)
    work = killed / "checkpoints/tiny/full-lora-text"
    deadline, checkpoint_5 = time.monotonic() + 300, None
    while not KILL_WHEN[when](killed, work):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        if checkpoint_5 is None and (work / "checkpoint-5/trainer_state.json").exists():
            checkpoint_5 = time.monotonic()
        time.sleep(0.02)
    # the resumed run keeps at least the training from checkpoint 5 to 10 (the kill falls at or past checkpoint 10)
    trained_before_kill = time.monotonic() - checkpoint_5 if when == "after checkpoint 10" and checkpoint_5 else 0.0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "models/tiny/stage2/full/lora-text").exists()  # nothing DVC could take as complete
    run_cli(killed, *STAGE2)

    expected, got = UNINTERRUPTED["history"], history(killed)
    assert {"loss", "grad_norm", "learning_rate", "num_tokens", "train_loss", "ethics_commonsense/acc"} <= expected.keys()
    assert got.keys() == expected.keys()
    for key in expected:
        assert expected[key], f"{key}: never logged"
        # the same steps as often (`epoch` comes with the last step's log and with the final summary)
        assert [s for s, _ in got[key]] == [s for s, _ in expected[key]], f"{key}: a step missing or logged twice"
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in expected[key]], abs=1e-4)
    # the timings cover the whole run (every segment's training up to the checkpoint resumed from), not the last
    # segment alone: its rate times its runtime is every step, and the killed attempt's time is in the runtime
    steps, clock = got["train_loss"][-1][0], timing(killed)
    assert clock["train_runtime"] * clock["train_steps_per_second"] == pytest.approx(steps, rel=0.02)
    assert clock["train_runtime"] >= trained_before_kill
    final, reference = adapter(killed), UNINTERRUPTED["adapter"]
    assert final.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(final[name], reference[name], atol=1e-5, rtol=1e-4)
    assert not work.exists()  # checkpoints go once the result is saved


@pytest.mark.slow
def test_an_evaluation_killed_midway_leaves_nothing_complete_and_its_rerun_ends_the_dead_run(tiny_project):
    import sqlite3

    root = tiny_project("eval")
    proc = run_cli(root, "eval_nlp", "--model", "base", wait=False)
    deadline = time.monotonic() + 300
    while True:  # until its run exists: the evaluation is under way
        assert proc.poll() is None and time.monotonic() < deadline, "the evaluation ended before it could be killed"
        try:
            with sqlite3.connect(root / "mlflow.db", timeout=1) as db:
                if db.execute("select 1 from runs where name = 'eval_nlp-tiny-base'").fetchone():
                    break
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # nothing DVC would take as complete
    assert not (root / "results/eval_nlp/tiny-base.json").exists()
    assert not (root / "predictions/eval_nlp/tiny-base").exists()

    run_cli(root, "eval_nlp", "--model", "base")
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name != "Default"]
    statuses = sorted(r.info.status for r in client.search_runs([experiment.experiment_id]))
    assert statuses == ["FINISHED", "KILLED"]
    assert (root / "results/eval_nlp/tiny-base.json").is_file() and (root / "predictions/eval_nlp/tiny-base").is_dir()


def test_the_resume_fingerprint_follows_what_changes_training(params_for, tmp_path):
    """A report or multimodal-evaluation setting does not make a killed run start afresh; a training setting does."""
    from sightbeyond.training.resume import fingerprint
    from sightbeyond.training.stage2 import PARAMS

    base = fingerprint(params_for(), PARAMS, [tmp_path], tuning="lora", modality="text")
    assert fingerprint(params_for(**{"report.resamples": 10, "eval_mm.batch_size": 2}), PARAMS, [tmp_path],
                       tuning="lora", modality="text") == base
    assert fingerprint(params_for(**{"presets.tiny.stage2.seed": 1}), PARAMS, [tmp_path], tuning="lora", modality="text") != base
    # the NLP benchmarks eval_nlp runs do not change training (DVC does not rerun stage 2 for them either)
    assert fingerprint(params_for(**{"eval_nlp.tasks": ["mmlu"]}), PARAMS, [tmp_path], tuning="lora", modality="text") == base
    # a backbone named by a hub id or a path, dots and all, is fingerprinted (its name's dots are not key separators)
    assert fingerprint(params_for(backbone="HuggingFaceTB/SmolLM2-1.7B"), PARAMS, [tmp_path], tuning="lora",
                       modality="text") != base
    # the backbone's template does: it writes the text stage 2 trains on
    assert fingerprint(params_for(**{"backbones.tiny.template": "v0"}), PARAMS, [tmp_path], tuning="lora",
                       modality="text") != base


def test_a_checkpoint_cut_short_is_skipped_and_removed(tmp_path):
    from sightbeyond.training.resume import last_complete_checkpoint

    for step, complete in ((5, True), (10, True), (15, False)):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "model.safetensors").write_bytes(b"weights")
        if complete:
            (checkpoint / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-5"]
    (tmp_path / "checkpoint-5" / "trainer_state.json").unlink()  # older than the last complete one: not the kill's
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert (tmp_path / "checkpoint-5").exists()
