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
    params = params_for(**{"presets.tiny.stage1.num_train_epochs": 1, "presets.tiny.stage1.global_batch_size": 4,
                           "presets.tiny.stage1.per_device_train_batch_size": 4})
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


def test_image_start_end_tokens_wrap_the_image_and_only_their_rows_train(tmp_path, params_for, mlflow_store, monkeypatch):
    """LLaVA v1's --mm_use_im_start_end: <im_start> <image>... <im_end> in what the model sees; in stage 1 the two
    added tokens' input-embedding rows train with the projector, every other row stays the LLM's; stage 2 starts from
    the trained rows."""
    from sightbeyond.model.llava import IMAGE_END, IMAGE_START, IMAGE_TOKEN, build_llava, load_processor
    from sightbeyond.layout import Cell
    from sightbeyond.training.preview import encode

    params = params_for(**{"presets.tiny.stage1.num_train_epochs": 1, "presets.tiny.stage1.global_batch_size": 4,
                           "presets.tiny.stage1.per_device_train_batch_size": 4, "model.image_start_end": True})
    write_pairs(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    processor = load_processor(params, template="plain")
    before = build_llava(params, processor.tokenizer).get_input_embeddings().weight.detach().clone()
    row = {"id": "x", "images": [Image.new("RGB", (32, 32))], "messages": [
        {"role": "user", "content": [{"type": "image", "text": None}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a square"}]}]}
    [ids], [labels] = encode(processor, [row], max_length=64)
    tokens = processor.tokenizer.convert_ids_to_tokens(ids)
    start = tokens.index(IMAGE_START)
    assert tokens[start:start + 6] == [IMAGE_START, *[IMAGE_TOKEN] * 4, IMAGE_END]  # 32 px, 16 px patches
    assert labels[start + 5] == -100  # <im_end> is input, not target

    stage1.run(params)
    after = build_llava(params, processor.tokenizer, Cell.of(params).stage1_dir).get_input_embeddings().weight.detach()
    changed = sorted(torch.nonzero((after != before).any(dim=1)).flatten().tolist())
    assert changed == processor.tokenizer.convert_tokens_to_ids([IMAGE_START, IMAGE_END])
