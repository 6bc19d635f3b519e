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
SETTINGS = {"presets.tiny.stage2.per_device_batch_size": 4, "presets.tiny.stage2.global_batch_size": 4,
            "stage2.save_steps": 5, "presets.tiny.stage2.eval_steps": 10}  # checkpoints on logging steps: same loss windows


def history(root) -> dict[str, list[tuple[int, float]]]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # the rerun continued the killed run
    assert runs[0].info.status == "FINISHED"
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, key))
            for key in ("loss", "ethics_commonsense/acc")}


def adapter(root):
    return load_file(str(root / "models/tiny/stage2/full/lora-text/adapter_model.safetensors"))


@pytest.mark.slow
def test_a_killed_run_resumes_into_the_same_run_and_ends_as_an_uninterrupted_one(tiny_project):
    straight = tiny_project("straight", **SETTINGS)
    run_cli(straight, *STAGE2)

    killed = tiny_project("killed", **SETTINGS)
    proc = run_cli(killed, *STAGE2, wait=False)
    work = killed / "checkpoints/tiny/full-lora-text"
    deadline = time.monotonic() + 300
    while not (work / "checkpoint-10/trainer_state.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "models/tiny/stage2/full/lora-text").exists()  # nothing DVC could take as complete
    run_cli(killed, *STAGE2)

    expected, got = history(straight), history(killed)
    for key in expected:
        assert expected[key], f"{key}: never logged"
        steps = [s for s, _ in got[key]]
        assert steps == sorted(set(steps)), f"{key}: a step logged twice"
        assert steps == [s for s, _ in expected[key]], f"{key}: steps missing"
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in expected[key]], abs=1e-4)
    final, reference = adapter(killed), adapter(straight)
    assert final.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(final[name], reference[name], atol=1e-5, rtol=1e-4)
    assert not work.exists()  # checkpoints go once the result is saved
