"""Two processes (gloo on CPU, launched by accelerate) train as one process does with the same global batch."""

from __future__ import annotations

import pytest
import torch

from conftest import ROOT, run_cli

STAGE2 = ("stage2", "--tuning", "lora", "--modality", "text")
# global batch 8: one process accumulates 2 micro-batches of 4, two processes take one each
SETTINGS = {"presets.tiny.stage2.per_device_train_batch_size": 4, "presets.tiny.stage2.global_batch_size": 8,
            "presets.tiny.stage2.lora.lora_dropout": 0.0,  # dropout draws differ per process; nothing else should
            "presets.tiny.stage2.eval_steps": 10, "stage2.save_steps": None,
            "presets.tiny.stage2.num_train_epochs": 1}  # 20 steps of 8 over the 160 rows
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize("launch", [{"ACCELERATE_USE_FSDP": "true"},
                                    {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}])
def test_fsdp_and_deepspeed_without_cuda_are_refused_not_run_as_replicas(launch, monkeypatch, capsys, tiny_project):
    """Without CUDA accelerate runs every launch as DDP over gloo and drops the FSDP and DeepSpeed settings: such a
    run would train full replicas while its config says sharded (measured: the Trainer's model was DDP-wrapped)."""
    from sightbeyond.cli import main

    root = tiny_project(**{"stage2.stepwise_tasks": []})
    monkeypatch.setenv("SIGHTBEYOND_ROOT", str(root))
    for key, value in launch.items():
        monkeypatch.setenv(key, value)
    assert main(["stage2", "--tuning", "ft", "--modality", "text"]) == 2
    assert "needs CUDA" in capsys.readouterr().err
    assert not (root / "models").exists() and not (root / "mlflow.db").exists()


GPUS = torch.cuda.device_count()


@pytest.mark.slow
@pytest.mark.skipif(GPUS == 0, reason="accelerate runs FSDP and DeepSpeed on CUDA devices only; scripts/gpu_checks.sh")
@pytest.mark.parametrize("config", ["fsdp.yaml", "zero2.yaml"])
def test_sharded_training_gives_the_loss_curve_and_weights_of_one_process(config, tiny_project, tiny_backbone):
    """Full fine-tuning under FSDP2 or ZeRO-2 on every GPU there is (two at most): the losses of one process at the
    same global batch, and the saved model is the gathered one, an ordinary checkpoint with one process's weights."""
    if config == "zero2.yaml":
        pytest.importorskip("deepspeed")
    processes = min(GPUS, 2)
    settings = {**SETTINGS, "stage2.stepwise_tasks": [], "presets.tiny.stage2.per_device_train_batch_size": 8 // processes}
    one, many = tiny_project("one", rows=160, **settings), tiny_project("many", rows=160, **settings)
    stage2 = ("stage2", "--tuning", "ft", "--modality", "text")
    run_cli(one, *stage2)
    run_cli(many, *stage2, launcher=(str(ROOT / ".venv/bin/accelerate"), "launch", "--config_file",
                                     str(ROOT / "configs/accelerate" / config), "--num_processes", str(processes),
                                     "--mixed_precision", "no", "--main_process_port", "29519"))
    curves, launches = {}, {}
    for root in (one, many):
        client, [run] = runs(root)
        curves[root.name] = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
        launches[root.name] = (run.data.tags["world_size"], run.data.tags["accelerate_plugin"])
    assert launches["many"] == (str(processes), "FSDP" if config == "fsdp.yaml" else "DeepSpeed ZeRO-2")
    assert [s for s, _ in curves["many"]] == [s for s, _ in curves["one"]] == [5, 10, 15, 20]
    assert [v for _, v in curves["many"]] == pytest.approx([v for _, v in curves["one"]], rel=2e-2)  # bf16 autocast

    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_backbone / "llm").state_dict()
    weights = {root.name: AutoModelForCausalLM.from_pretrained(root / "models/tiny/stage2/full/ft-text").state_dict()
               for root in (one, many)}
    assert weights["many"].keys() == weights["one"].keys()
    for name, tensor in weights["one"].items():  # whole tensors, not one process's shard, trained as one process does
        torch.testing.assert_close(weights["many"][name], tensor, rtol=2e-2, atol=2e-3, msg=name)
    assert any(not torch.equal(tensor, initial) for tensor, initial in zip(weights["one"].values(), base.values()))
