"""Stage runs follow MLflow's conventions: the UI opens the experiment on its runs, a run says what its cell is, its
params are the few a person compares (the model config is an artifact), training runs sample system metrics."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

from transformers import LlamaConfig, LlamaForCausalLM

from sightbeyond.tracking.runs import stage_run
from sightbeyond.training.resume import ResumableMLflowCallback


def test_stage_runs_follow_mlflow_conventions(params_for, mlflow_store, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    params = params_for()
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32))
    with stage_run("stage2", params, name="stage2-x", tags={"tuning": "lora", "modality": "image"},
                   param_sections=("model", "stage2"), hparams=params.hparams.stage2, system_metrics=True) as run:
        callback = ResumableMLflowCallback()
        callback.setup(SimpleNamespace(), SimpleNamespace(is_world_process_zero=True), model)  # the Trainer's set-up
        time.sleep(1.0)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    logged = client.get_run(run.info.run_id).data
    assert "visual instruction tuning" in logged.tags["mlflow.note.content"] and "lora" in logged.tags["mlflow.note.content"]
    assert {"backbone", "data", "tuning", "modality", "preset", "stage2.seed", "stage2.global_batch_size"} <= logged.params.keys()
    assert len(logged.params) < 60 and "vocab_size" not in logged.params and "hidden_size" not in logged.params
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.json"]
    assert any(name.startswith("system/") for name in logged.metrics)


def test_weights_are_logged_models_with_their_dvc_md5_and_scores_link_to_them(params_for, mlflow_store, tmp_path):
    """An external model per set of weights (not a copy of them), found again by DVC's md5 of the folder; metrics
    logged with its id appear on the model, as the Models tab shows them."""
    import mlflow

    from sightbeyond.tracking.runs import dvc_md5, logged_model

    params = params_for()
    weights = tmp_path / "llm"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"weights")
    first = logged_model(params, weights, name="llm-x", model_type="llm")
    assert logged_model(params, weights, name="llm-x", model_type="llm") == first
    model = mlflow.get_logged_model(first)
    assert model.tags["dvc_md5"] == dvc_md5(weights) and model.tags["dvc_md5"].endswith(".dir")
    assert model.tags["mlflow.model.isExternal"] == "true"
    assert [a.path for a in mlflow.artifacts.list_artifacts(model.artifact_location)] == ["artifacts/MLmodel"]  # no weights
    with stage_run("eval_nlp", params, name="eval") as run:
        mlflow.log_metrics({"ethics/acc": 0.5}, model_id=first)
    assert {m.key: m.value for m in mlflow.get_logged_model(first).metrics} == {"ethics/acc": 0.5}
    (weights / "model.safetensors").write_bytes(b"other weights")
    assert logged_model(params, weights, name="llm-x", model_type="llm") != first  # other weights, another model


def test_a_run_left_running_by_a_dead_process_is_marked_killed(params_for, mlflow_store):
    import socket
    import subprocess

    import mlflow

    from sightbeyond.tracking.runs import ensure_experiment, stage_run

    params = params_for()
    mlflow.set_tracking_uri(f"sqlite:///{mlflow_store}")
    client = mlflow.MlflowClient()
    experiment = ensure_experiment(params.tracking.experiment)
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    left = {pid: client.create_run(experiment, run_name="eval_nlp-tiny-base", tags={"host": host, "pid": str(pid)})
            for pid in (dead.pid, os.getpid())}
    elsewhere = client.create_run(experiment, run_name="eval_nlp-tiny-base", tags={"host": "another-machine", "pid": "1"})
    with stage_run("eval_nlp", params, name="eval_nlp-tiny-base"):
        pass
    status = {run_id: client.get_run(run_id).info.status
              for run_id in [r.info.run_id for r in left.values()] + [elsewhere.info.run_id]}
    assert status[left[dead.pid].info.run_id] == "KILLED"
    assert status[left[os.getpid()].info.run_id] == "RUNNING"  # a live process's run is its own to end
    assert status[elsewhere.info.run_id] == "RUNNING"         # another machine's: this one cannot tell
