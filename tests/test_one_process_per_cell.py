"""One cell, one process: a second process started on a cell another one works on stops at once (exit 2, naming the
holder), touching nothing of the first; a holder that died does not block."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import sqlite3
import time

import pytest

from conftest import run_cli
from sightbeyond.io import Busy, exclusive

STAGE2 = ("stage2", "--tuning", "lora", "--modality", "text")


def _hold(lock_file: str, ready) -> None:
    with exclusive(lock_file, "stage2 of tiny-full-lora-text"):
        ready.set()
        time.sleep(600)


@pytest.fixture
def holder(tmp_path):
    """A process of its own holding a cell's lock, as a stage does."""
    lock_file = tmp_path / "locks/stage2-tiny-full-lora-text.lock"
    ready = multiprocessing.Event()
    proc = multiprocessing.get_context("fork").Process(target=_hold, args=(str(lock_file), ready))
    proc.start()
    assert ready.wait(30)
    yield proc, lock_file
    proc.kill()
    proc.join()


def test_a_held_cell_is_refused_naming_host_pid_and_since(holder):
    proc, lock_file = holder
    with pytest.raises(Busy) as refused:
        with exclusive(lock_file, "stage2 of tiny-full-lora-text"):
            pytest.fail("two processes held one cell")
    message = str(refused.value)
    assert f"stage2 of tiny-full-lora-text is being worked on by pid {proc.pid} on host {socket.gethostname()} since " \
           f"{time.strftime('%Y-%m-%d')}" in message and str(lock_file) in message
    assert proc.is_alive()  # nothing of the holder's was touched
    assert json.loads(lock_file.read_text())["pid"] == proc.pid


def test_a_holder_killed_with_sigkill_leaves_the_cell_to_the_next_attempt(holder, capsys):
    proc, lock_file = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    with exclusive(lock_file, "stage2 of tiny-full-lora-text"):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    # the dead holder is named as such
    assert f"taking over from pid {proc.pid} on host {socket.gethostname()}" in capsys.readouterr().out
    with exclusive(lock_file, "stage2 of tiny-full-lora-text"):  # a clean release leaves nothing stale
        pass
    assert "taking over" not in capsys.readouterr().out


def test_only_the_main_process_of_a_launch_takes_the_lock(holder, monkeypatch):
    _, lock_file = holder
    monkeypatch.setenv("RANK", "1")  # its processes are the main one's: the lock is the launch's, held by rank 0
    with exclusive(lock_file, "stage2 of tiny-full-lora-text"):
        pass


def test_two_stage2_of_one_cell_started_together_give_one_run(tiny_project):
    root = tiny_project(**{"presets.tiny.stage2.max_steps": 12, "presets.tiny.stage2.eval_steps": 4})
    first, second = run_cli(root, *STAGE2, wait=False), run_cli(root, *STAGE2, wait=False)
    outputs = {proc.pid: proc.communicate(timeout=600)[0] for proc in (first, second)}
    codes = {proc.pid: proc.returncode for proc in (first, second)}
    assert sorted(codes.values()) == [0, 2], outputs
    winner, loser = (first, second) if codes[first.pid] == 0 else (second, first)
    [line] = [line for line in outputs[loser.pid].splitlines() if " error: " in line]
    assert f"stage2 of tiny-full-lora-text is being worked on by pid {winner.pid} on host {socket.gethostname()}" in line
    assert "Traceback" not in outputs[loser.pid]

    db = sqlite3.connect(root / "mlflow.db")
    runs = db.execute("select run_uuid, status from runs where name = 'stage2-tiny-full-lora-text'").fetchall()
    assert [status for _, status in runs] == ["FINISHED"]
    assert db.execute("select value from tags where run_uuid = ? and key = 'pid'", (runs[0][0],)).fetchone() == (str(winner.pid),)
    pairs = db.execute("select key, step, count(*) from metrics where run_uuid = ? and key not like 'system/%' "
                       "group by key, step", (runs[0][0],)).fetchall()
    assert {"loss", "ethics_commonsense/acc"} <= {key for key, _, _ in pairs}
    assert [(key, step) for key, step, n in pairs if n > 1] == []  # every (metric, step) once
    assert (root / "models/tiny/stage2/full/lora-text/adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_two_dvc_queue_workers_on_one_cell_each_finish_their_own_run(tmp_path):
    """`dvc queue start -j 2` with two experiments of one cell: each worker has a workspace (and so checkpoints and
    locks) of its own, and both log to the one MLflow store: two FINISHED runs, each (metric, step) once in each."""
    import subprocess

    from conftest import ROOT, shrink

    store = tmp_path / "mlflow.db"
    env = {**os.environ, "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("SIGHTBEYOND_ROOT", None)

    def sh(*args) -> str:
        done = subprocess.run(args, cwd=clone, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"{args}: {(done.stdout + done.stderr)[-3000:]}"
        return done.stdout

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    shrink(clone, commit=True)
    cell = "stage2@full-lora-text"
    sh("dvc", "repro", cell)  # its inputs, in the DVC cache for the workers' workspaces
    sh("git", "commit", "-qam", "inputs of the cell")
    for seed in (1, 2):
        sh("dvc", "exp", "run", "--queue", "-n", f"seed{seed}", "-S", f"presets.tiny.stage2.seed={seed}", cell)
    sh("dvc", "queue", "start", "-j", "2")
    deadline = time.monotonic() + 1200
    while any(state in sh("dvc", "queue", "status") for state in ("Queued", "Running")):
        assert time.monotonic() < deadline, sh("dvc", "queue", "status")
        time.sleep(5)
    status = sh("dvc", "queue", "status")
    assert status.count("Success") == 2, status + "".join(sh("dvc", "queue", "logs", f"seed{s}") for s in (1, 2))
    sh("dvc", "queue", "stop")

    db = sqlite3.connect(store)
    runs = db.execute("select r.run_uuid, r.status, t.value from runs r join tags t on t.run_uuid = r.run_uuid "
                      "where r.name = 'stage2-tiny-full-lora-text' and t.key = 'dvc_exp'").fetchall()
    assert sorted((status, exp) for _, status, exp in runs) == [("FINISHED", "seed1"), ("FINISHED", "seed2")]
    for run_id, _, _ in runs:
        pairs = db.execute("select key, step, count(*) from metrics where run_uuid = ? and key not like 'system/%' "
                           "group by key, step", (run_id,)).fetchall()
        assert "train_loss" in {key for key, _, _ in pairs}
        assert [(key, step) for key, step, n in pairs if n > 1] == []
