"""Two clones standing in for two machines of a team: a local folder as the DVC remote, a tracking server as the
shared MLflow store, a bare git repository as the shared git remote. What A computes, B pulls instead of recomputing,
B's report reads A's runs, and an experiment A ran travels to B with `dvc exp push/pull`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, shrink

sys.path.insert(0, str(ROOT / "benchmarks"))
from tracking_concurrency import TrackingServer  # noqa: E402


@pytest.mark.slow
def test_two_machines_share_outputs_runs_and_experiments(tmp_path):
    with TrackingServer(tmp_path / "server") as server:
        env = {**os.environ, "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
               "MLFLOW_TRACKING_URI": server.uri, "TOKENIZERS_PARALLELISM": "false"}
        env.pop("SIGHTBEYOND_ROOT", None)

        def sh(cwd, *args, check=True) -> subprocess.CompletedProcess:
            done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
            assert not check or done.returncode == 0, f"{args}: {(done.stdout + done.stderr)[-3000:]}"
            return done

        origin = tmp_path / "origin.git"
        sh(tmp_path, "git", "clone", "-q", "--bare", str(ROOT), str(origin))
        remote = tmp_path / "dvc-remote"
        a, b = tmp_path / "a", tmp_path / "b"
        sh(tmp_path, "git", "clone", "-q", str(origin), str(a))
        shrink(a, commit=True)  # the team's params: small, so the test is short
        sh(a, "git", "push", "-q", "origin", "HEAD")
        sh(tmp_path, "git", "clone", "-q", str(origin), str(b))
        for machine in (a, b):
            sh(machine, "dvc", "remote", "add", "--local", "-d", "shared", str(remote))

        sh(a, "dvc", "repro", "eval_nlp_base")  # data, the tiny backbone, and the base LLM's evaluation
        sh(a, "git", "commit", "-qam", "A's lock", "--allow-empty")
        sh(a, "git", "push", "-q", "origin", "HEAD")
        sh(a, "dvc", "push", "--with-deps", "eval_nlp_base")
        sh(b, "git", "pull", "-q")
        sh(b, "dvc", "pull", "--with-deps", "eval_nlp_base")
        again = sh(b, "dvc", "repro", "eval_nlp_base")
        assert "Running stage" not in again.stdout, again.stdout  # B has A's outputs: nothing to recompute

        sh(b, "sightbeyond", "report")
        read = json.loads((b / "reports/runs.json").read_text())
        from mlflow import MlflowClient

        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("sight-beyond-text").experiment_id
        [base] = client.search_runs([experiment], "tags.stage = 'eval_nlp'")
        assert any(base.info.run_id in ids for ids in read.values())  # B's report from A's run

        sh(a, "dvc", "exp", "run", "-n", "base-batch4", "-S", "eval_nlp.batch_size=4", "eval_nlp_base")
        sh(a, "dvc", "exp", "push", "origin", "base-batch4")
        sh(b, "dvc", "exp", "pull", "origin", "base-batch4")
        [ref] = [r for r in sh(b, "git", "for-each-ref", "refs/exps", "--format=%(refname)").stdout.split()
                 if r.endswith("/base-batch4")]
        lock = yaml.safe_load(sh(b, "git", "show", f"{ref}:dvc.lock").stdout)
        assert "batch_size: 4" in sh(b, "git", "show", f"{ref}:params.yaml").stdout
        [predictions] = [o for o in lock["stages"]["eval_nlp_base"]["outs"] if o["path"].startswith("predictions/")]
        md5 = predictions["md5"]
        assert (b / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).is_file()  # its outputs came with it, from the remote
