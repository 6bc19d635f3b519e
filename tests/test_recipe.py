"""The authors' recipe as parameters: LLaVA-1.5's projector learning rate, and `check` printing the resolved recipe."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import ROOT
from sightbeyond.config import load_params


def test_llava15_trains_the_projector_at_its_own_learning_rate(params_for, tmp_path):
    from datasets import Dataset
    from trl import SFTTrainer

    from sightbeyond.model.llava import build_llava, load_processor
    from sightbeyond.training.common import sft_config, with_projector_lr
    from sightbeyond.training.stage2 import lora_config

    params = params_for(**{"presets.tiny.stage2.mm_projector_lr": 1e-2, "presets.tiny.stage2.max_steps": 1,
                           "presets.tiny.stage2.warmup_steps": 0.0,
                           "presets.tiny.stage2.global_batch_size": 2, "presets.tiny.stage2.per_device_train_batch_size": 2})
    hparams = params.hparams.stage2
    processor = load_processor(params)
    model = build_llava(params, processor.tokenizer)
    model.model.vision_tower.requires_grad_(False)
    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), "red").save(image)
    rows = [{"images": [str(image)], "messages": [
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Is there a star?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "No, there is no star."}]}]}] * 2
    trainer = SFTTrainer(model=model, args=sft_config(tmp_path / "work", hparams, learning_rate=hparams.learning_rate.lora, save_steps=None),
                         train_dataset=Dataset.from_list(rows), processing_class=processor,
                         peft_config=lora_config(params, "image"))
    with_projector_lr(trainer, hparams.mm_projector_lr)
    rest, projector = trainer.optimizer.param_groups
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert projector["lr"] == 1e-2 and rest["lr"] == hparams.learning_rate.lora
    assert projector["params"] and all("multi_modal_projector" in names[id(p)] for p in projector["params"])
    assert rest["params"] and all("lora_" in names[id(p)] for p in rest["params"])
    before = {names[id(p)]: p.detach().clone() for p in projector["params"]}
    trainer.train()
    assert any(not torch.equal(before[names[id(p)]], p) for p in projector["params"])


def test_check_prints_the_resolved_recipe(capsys, monkeypatch):
    """What a run of the paper's LLaMA-2 would do, read off the authors' scripts (README: The authors' recipe): stage 2 at a global batch of 32 (2500 steps
    over the 80k records), image start/end tokens, fp32 evaluation, the authors' decoding when asked for."""
    from sightbeyond.cli import main
    from sightbeyond.model import weights

    monkeypatch.setattr(weights, "_hub", lambda name, what, repo, param: repo)  # weights found, wherever they are
    assert main(["-S", "backbone=llama2", "-S", "eval_mm.do_sample=true", "check"]) == 0
    out = capsys.readouterr().out
    for line in ("stage 2: global batch 32", "2500 steps over 80000 records", "lr 2e-05", "template llama_2",
                 "image tokens: 256 per image, wrapped in <im_start> <im_end>", "evaluation dtype float32",
                 "do_sample top_k 50 temperature 0.2 num_beams 1 seed 42", "captions: at most 10 new tokens"):
        assert line in out, (line, out)


def test_llava_preset_keeps_llavas_own_batch():
    params = load_params(ROOT / "params.yaml", overrides={"backbone": "vicuna7b", "preset": "llava"})
    assert params.hparams.stage2.global_batch_size == 128 and params.image_start_end


@pytest.mark.parametrize("preset, wrapped", [("paper", True), ("llava15", False), ("tiny", False)])
def test_image_start_end_follows_the_preset_unless_set(preset, wrapped):
    params = load_params(ROOT / "params.yaml", overrides={"backbone": "llama2", "preset": preset})
    assert params.image_start_end is wrapped
    assert load_params(ROOT / "params.yaml", overrides={"backbone": "llama2", "preset": preset,
                                                        "model.image_start_end": not wrapped}).image_start_end is not wrapped


def test_the_training_seed_and_schedule_are_params_that_reach_sftconfig(params_for, tmp_path):
    """`dvc exp run -S presets.paper.stage2.seed=1` is a seed sweep: the preset's SFTConfig fields pass as they are."""
    from sightbeyond.training.common import sft_config

    hparams = params_for(**{"presets.tiny.stage2.seed": 7, "presets.tiny.stage2.lr_scheduler_type": "linear",
                            "presets.tiny.stage2.weight_decay": 0.1}).hparams.stage2
    args = sft_config(tmp_path, hparams, learning_rate=hparams.learning_rate.lora, save_steps=None)
    assert (args.seed, args.lr_scheduler_type, args.weight_decay) == (7, "linear", 0.1)


def test_a_value_sftconfig_refuses_fails_before_the_model_loads(params_for, tmp_path):
    from sightbeyond.config import ConfigError
    from sightbeyond.training.common import sft_config

    hparams = params_for(**{"presets.tiny.stage2.lr_scheduler_type": "cosine_typo"}).hparams.stage2
    with pytest.raises(ConfigError, match=r"presets\.tiny\.stage2: SFTConfig refuses it: .*cosine_typo"):
        sft_config(tmp_path, hparams, learning_rate=1e-3, save_steps=None, where="presets.tiny.stage2")


@pytest.mark.parametrize("preset, projector", [("paper", "linear"), ("tiny", "linear"), ("llava15", "mlp2x_gelu"),
                                               ("smollm2", "mlp2x_gelu")])
def test_the_projector_follows_the_preset_unless_set(preset, projector):
    params = load_params(ROOT / "params.yaml", overrides={"backbone": "llama2", "preset": preset})
    assert params.projector == projector
    other = {"linear": "mlp2x_gelu", "mlp2x_gelu": "linear"}[projector]
    assert load_params(ROOT / "params.yaml", overrides={"backbone": "llama2", "preset": preset,
                                                        "model.projector": other}).projector == other


def test_a_presets_projector_is_the_one_built_and_saved_for_stage2(params_for, tmp_path):
    """A preset's mlp2x_gelu reaches the model (LLaVA-1.5's two layers), and a stage-1 projector saved from it loads
    only into a run with the same projector."""
    from torch import nn

    from sightbeyond.io import ConfigError
    from sightbeyond.model.llava import build_llava, load_processor, save_projector

    params = params_for(**{"presets.tiny.projector": "mlp2x_gelu"})
    processor = load_processor(params)
    model = build_llava(params, processor.tokenizer)
    assert model.config.projector_type == "mlp2x_gelu"
    assert sum(isinstance(m, nn.Linear) for m in model.model.multi_modal_projector.modules()) == 2
    save_projector(model, model.state_dict(), tmp_path, processor.tokenizer)
    assert build_llava(params, processor.tokenizer, projector_dir=tmp_path).config.projector_type == "mlp2x_gelu"
    with pytest.raises(ConfigError, match="mlp2x_gelu"):
        build_llava(params_for(), processor.tokenizer, projector_dir=tmp_path)
