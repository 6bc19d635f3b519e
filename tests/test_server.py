"""The pipeline against a real tracking server (scripts/tracking_server, started and stopped here, SQLite or
PostgreSQL behind it): a stage logs through it, artifacts included, a killed run resumes into the same run, the report reads the runs
back, and writers logging at training rate at once lose nothing, there and in the default SQLite file."""

from __future__ import annotations

import glob
import json
import sys

import pytest

from conftest import ROOT, run_cli

sys.path.insert(0, str(ROOT / "benchmarks"))
from tracking_concurrency import PostgresCluster, TrackingServer, run_writers  # noqa: E402  (the benchmark's own)


@pytest.fixture
def server(tmp_path):
    with TrackingServer(tmp_path / "server") as running:
        yield running


@pytest.mark.slow
def test_a_stage_logs_through_the_server_and_the_report_reads_it_back(tiny_project, server):
    from mlflow import MlflowClient

    root = tiny_project()
    run_cli(root, "eval_nlp", "--model", "base", store=server.uri)
    client = MlflowClient(server.uri)
    [run] = client.search_runs([client.get_experiment_by_name("sight-beyond-text").experiment_id], "tags.stage = 'eval_nlp'")
    assert run.info.status == "FINISHED" and run.data.metrics["ethics_commonsense/acc"] >= 0
    assert list((server.folder / "artifacts").rglob("predictions/ethics_cm.jsonl"))  # stored by the server, not locally
    assert not (root / "mlruns").exists() and not (root / "mlflow.db").exists()

    run_cli(root, "report", store=server.uri)
    read = json.loads((root / "reports/runs.json").read_text())
    assert any(run.info.run_id in ids for ids in read.values())


@pytest.mark.slow
def test_stage2_trains_through_the_server(tiny_project, server):
    """A training run's tags and params reach a REST store, which takes strings only (a SQLite file converts)."""
    from mlflow import MlflowClient

    root = tiny_project(**{"presets.tiny.stage2.max_steps": 2, "stage2.stepwise_tasks": []})
    run_cli(root, "stage2", "--tuning", "lora", "--modality", "text", store=server.uri)
    client = MlflowClient(server.uri)
    [run] = client.search_runs([client.get_experiment_by_name("sight-beyond-text").experiment_id], "tags.stage = 'stage2'")
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "1" and "train_loss" in run.data.metrics


@pytest.mark.slow
def test_a_failed_run_resumes_into_the_same_run_on_the_server(params_for, server, monkeypatch):
    import mlflow

    from sightbeyond.tracking.runs import stage_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    params = params_for()
    with pytest.raises(KeyboardInterrupt), stage_run("stage2", params, name="stage2-cell") as run:
        mlflow.log_metrics({"loss": 1.0}, step=5, synchronous=True)
        raise KeyboardInterrupt  # killed
    assert mlflow.get_run(run.info.run_id).info.status == "FAILED"
    with stage_run("stage2", params, name="stage2-cell", run_id=run.info.run_id):
        mlflow.log_metrics({"loss": 0.5}, step=10, synchronous=True)
    resumed = mlflow.get_run(run.info.run_id)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert resumed.info.status == "FINISHED" and [(m.step, m.value) for m in history] == [(5, 1.0), (10, 0.5)]


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_writers_at_training_rate_lose_nothing(store, tmp_path, server):
    uri = server.uri if store == "server" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_writers(uri, "concurrency", writers=4, steps=50)
    assert outcome["errors"] == [] and outcome["finished"] == outcome["runs"] == 4
    assert outcome["missing"] == outcome["duplicated"] == 0


@pytest.mark.slow
@pytest.mark.skipif(not glob.glob("/usr/lib/postgresql/*/bin/initdb"), reason="PostgreSQL is not installed")
def test_a_server_on_postgresql_logs_the_pipeline_and_loses_nothing(tiny_project, tmp_path):
    """The team's set-up: the tracking server on a PostgreSQL database (a throwaway cluster of Debian's package)."""
    with PostgresCluster() as db, TrackingServer(tmp_path / "server", db.uri) as server:
        root = tiny_project()
        run_cli(root, "eval_nlp", "--model", "base", store=server.uri)
        from mlflow import MlflowClient

        client = MlflowClient(server.uri)
        [run] = client.search_runs([client.get_experiment_by_name("sight-beyond-text").experiment_id])
        assert run.info.status == "FINISHED" and run.data.metrics["ethics_commonsense/acc"] >= 0
        assert list((server.folder / "artifacts").rglob("predictions/ethics_cm.jsonl"))
        outcome = run_writers(server.uri, "concurrency", writers=4, steps=20)
    assert outcome["errors"] == [] and outcome["finished"] == outcome["runs"] == 4
    assert outcome["missing"] == outcome["duplicated"] == 0
