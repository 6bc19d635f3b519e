"""Stage 1 trains the projector only, and the same inputs give the same projector: DVC and the paper's comparisons
rely on a rerun reproducing its output."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from transformers import set_seed

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
    # the run records the projector it built: params.yaml's null (the preset's) resolved
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{mlflow_store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 2 and {r.data.params["model.projector"] for r in runs} == {"linear"}


def test_image_start_end_tokens_never_occur_in_stage1_and_wrap_the_image_in_stage2(tmp_path, params_for, mlflow_store,
                                                                                    monkeypatch):
    """LLaVA v1's --mm_use_im_start_end with the authors' stage-1 `--version v0_plain`: preprocess_plain replaces the
    first turn by a bare <image>, so stage 1 never shows <im_start>/<im_end> and no embedding row trains there; the
    rows are saved as initialised, and stage 2's templates wrap the image in them."""
    from sightbeyond.model.llava import IMAGE_END, IMAGE_START, IMAGE_TOKEN, build_llava, load_processor
    from sightbeyond.layout import Cell
    from sightbeyond.training.preview import encode

    params = params_for(**{"presets.tiny.stage1.num_train_epochs": 1, "presets.tiny.stage1.global_batch_size": 4,
                           "presets.tiny.stage1.per_device_train_batch_size": 4, "model.image_start_end": True})
    write_pairs(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    row = {"id": "x", "images": [Image.new("RGB", (32, 32))], "messages": [
        {"role": "user", "content": [{"type": "image", "text": None}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a square"}]}]}
    plain = load_processor(params, template="plain")
    [ids], _ = encode(plain, [row], max_length=64)
    tokens = plain.tokenizer.convert_ids_to_tokens(ids)
    assert IMAGE_START not in tokens and IMAGE_END not in tokens and tokens.count(IMAGE_TOKEN) == 4  # 32 px, 16 px patches
    set_seed(params.hparams.stage1.seed)  # as stage 1 does before it builds the model: the new rows are drawn
    before = build_llava(params, plain.tokenizer).get_input_embeddings().weight.detach().clone()

    stage1.run(params)
    after = build_llava(params, plain.tokenizer, Cell.of(params).stage1_dir).get_input_embeddings().weight.detach()
    assert torch.equal(after, before)  # the start/end rows too: stage 1 never saw them

    v1 = load_processor(params)
    [ids], [labels] = encode(v1, [row], max_length=512)
    tokens = v1.tokenizer.convert_ids_to_tokens(ids)
    start = tokens.index(IMAGE_START)
    assert tokens[start:start + 6] == [IMAGE_START, *[IMAGE_TOKEN] * 4, IMAGE_END]
    assert labels[start + 5] == -100  # <im_end> is input, not target
