"""Two processes (gloo on CPU, launched by accelerate) train as one process does with the same global batch."""

from __future__ import annotations

import pytest

from conftest import ROOT, run_cli

STAGE2 = ("stage2", "--tuning", "lora", "--modality", "text")
# global batch 8: one process accumulates 2 micro-batches of 4, two processes take one each
SETTINGS = {"presets.tiny.stage2.per_device_batch_size": 4, "presets.tiny.stage2.global_batch_size": 8,
            "presets.tiny.stage2.lora.dropout": 0.0,  # dropout draws differ per process; nothing else should
            "presets.tiny.stage2.eval_steps": 10, "stage2.save_steps": None}
TOLERANCE = 1e-5  # relative, per logged loss: only the reduction order differs (measured: 1e-7)


def runs(root):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name != "Default"]
    return client, client.search_runs([experiment.experiment_id])


@pytest.mark.slow
def test_two_processes_give_the_loss_curve_of_one(tiny_project):
    one, two = tiny_project("one", rows=160, **SETTINGS), tiny_project("two", rows=160, **SETTINGS)
    run_cli(one, *STAGE2)
    run_cli(two, *STAGE2, launcher=(str(ROOT / ".venv/bin/accelerate"), "launch", "--config_file",
                                    str(ROOT / "configs/accelerate/cpu_ddp.yaml")))
    curves = {}
    for root in (one, two):
        client, [run] = runs(root)  # one MLflow run: only the main process logs
        curves[root.name] = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
        assert run.data.params["stage2.global_batch_size"] == "8"
    assert [s for s, _ in curves["two"]] == [s for s, _ in curves["one"]] == [5, 10, 15, 20]
    assert [v for _, v in curves["two"]] == pytest.approx([v for _, v in curves["one"]], rel=TOLERANCE)
    # step-wise evaluation: each process scores half the documents, the main process logs what all of them scored
    stepwise = {}
    for root in (one, two):
        client, [run] = runs(root)
        stepwise[root.name] = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "ethics_commonsense/acc"))
    assert [s for s, _ in stepwise["two"]] == [0, 10, 20]
    assert [v for _, v in stepwise["two"]] == pytest.approx([v for _, v in stepwise["one"]], abs=1e-6)
    assert (two / "models/tiny/stage2/full/lora-text/adapter_model.safetensors").is_file()
    assert not list((two / "models/tiny/stage2/full").glob(".*partial"))


@pytest.mark.parametrize("launch", [{"ACCELERATE_USE_FSDP": "true"},
                                    {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}])
def test_sharded_parameters_and_stepwise_evaluation_are_refused_before_the_model_loads(launch, monkeypatch, capsys,
                                                                                          tiny_project):
    """The step-wise evaluator runs the LLM outside the trainer's forward: under FSDP or ZeRO-3, whose parameters
    are sharded across processes, it would hang or score garbage, so the launch is refused with what to do."""
    from sightbeyond.cli import main

    root = tiny_project()
    monkeypatch.setenv("SIGHTBEYOND_ROOT", str(root))
    for key, value in launch.items():
        monkeypatch.setenv(key, value)
    assert main(list(STAGE2)) == 2
    assert "step-wise evaluation needs every process to hold the whole model" in capsys.readouterr().err
    assert not (root / "models").exists() and not (root / "mlflow.db").exists()
