"""A stage that fails leaves nothing DVC or the next stage could take as its complete output."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sightbeyond.io import atomic_dir


def test_atomic_dir_leaves_nothing_when_the_block_fails(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_the_previous_output_only_on_success(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "new").write_text("new")
        raise RuntimeError
    assert [p.name for p in final.iterdir()] == ["old"]
    with atomic_dir(final) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new"]


def test_prepare_stopped_by_a_bad_record_writes_no_prepared_data(params_for, tmp_path, monkeypatch, mlflow_store):
    import mlflow

    from sightbeyond.data import prepare
    from sightbeyond.data.llava_format import BadRecord

    (tmp_path / "images").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "images/a.jpg")
    good = {"id": "a", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]}
    (tmp_path / "chat.json").write_text(json.dumps([good]))
    (tmp_path / "instruct").mkdir()
    (tmp_path / "instruct/llava_instruct_2.json").write_text(json.dumps([good, {**good, "id": "b", "image": "gone.jpg"}]))
    params = params_for(**{"prepare.stage1_file": str(tmp_path / "chat.json"), "prepare.stage1_images": str(tmp_path / "images"),
                           "prepare.instruct_dir": str(tmp_path / "instruct"), "prepare.instruct_images": str(tmp_path / "images")})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIGHTBEYOND_ROOT", str(tmp_path))
    with pytest.raises(BadRecord, match="record b: image .*gone.jpg not found"):
        prepare.run(params, "instruct")
    assert not (tmp_path / "data/prepared/full").exists()
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]  # no scratch left either
    [run] = mlflow.search_runs(experiment_names=[params.tracking.experiment], output_format="list")
    assert run.info.status == "FAILED"
