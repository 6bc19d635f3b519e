"""Stage 1 trains the projector only, and the same inputs give the same projector: DVC and the paper's comparisons
rely on a rerun reproducing its output."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from sightbeyond.data.prepare import save
from sightbeyond.training import stage1


def write_pairs(root: Path, n: int = 8) -> None:
    (root / "images").mkdir(parents=True)
    rows = []
    for i, color in enumerate(["red", "green", "blue", "yellow"] * (n // 4)):
        Image.new("RGB", (32, 32), color).save(root / "images" / f"{i}.png")
        rows.append({"id": str(i), "images": [str(root / "images" / f"{i}.png")], "messages": [
            {"role": "user", "content": [{"type": "image", "text": None}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"a {color} square on a dark background ."}]}]})
    save(lambda: iter(rows), root / "data/prepared/stage1", with_image=True)


def test_stage1_trains_only_the_projector_and_a_rerun_reproduces_it(tmp_path, params_for, mlflow_store, monkeypatch):
    params = params_for(**{"presets.tiny.stage1.epochs": 1, "presets.tiny.stage1.global_batch_size": 4,
                           "presets.tiny.stage1.per_device_batch_size": 4})
    projectors = []
    for run in ("first", "second"):
        root = tmp_path / run
        write_pairs(root)
        (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
        monkeypatch.chdir(root)
        stage1.run(params)
        projectors.append(load_file(str(root / "models/tiny/stage1/projector.safetensors")))
    first, second = projectors
    assert first.keys() == second.keys() and first
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0)

    from sightbeyond.model.llava import build_llava, load_processor

    untrained = build_llava(params, load_processor(params, template="plain").tokenizer).model.multi_modal_projector
    assert any(not torch.equal(first[name], weight) for name, weight in untrained.state_dict().items())
