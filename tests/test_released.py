"""A checkpoint in the original LLaVA layout imports as a plain LLaMA with the same logits, vocabulary and projector."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from sightbeyond.model.released import extract_released_llm
from sightbeyond.embedded.tiny import train_tokenizer

TEXT = "Is there a red circle in the image? No, there is a blue square."
LLAVA_TOKENS = ["<im_patch>", "<im_start>", "<im_end>"]
MM_HIDDEN = 16
LLAVA_PROJECTORS = {  # LLaVA's state-dict names, and ours
    "linear": {"weight": "linear.weight", "bias": "linear.bias"},
    "mlp2x_gelu": {"0.weight": "linear_1.weight", "0.bias": "linear_1.bias",
                   "2.weight": "linear_2.weight", "2.bias": "linear_2.bias"},
}


@pytest.fixture(scope="module")
def original():
    """A tiny LLaMA whose vocabulary LLaVA extended by its three image tokens, with its tokenizer."""
    torch.manual_seed(0)
    tokenizer = train_tokenizer([TEXT, "a green triangle on a dark background ."] * 5, vocab_size=300)
    base_vocab = len(tokenizer)
    tokenizer.add_tokens(LLAVA_TOKENS, special_tokens=True)
    assert len(tokenizer) == base_vocab + 3
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                                       max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                       tie_word_embeddings=False)).eval()
    return llm, tokenizer


def llava_checkpoint(path: Path, llm, tokenizer, fmt: str = "bin", projector_type: str = "linear",
                     **config_changes) -> dict[str, torch.Tensor]:
    """Save `llm` as LLaVA's LlavaLlamaForCausalLM did, in two shards; returns the mm_projector tensors."""
    path.mkdir(parents=True)
    hidden = llm.config.hidden_size
    if projector_type == "linear":
        projector = {"weight": torch.randn(hidden, MM_HIDDEN), "bias": torch.randn(hidden)}
    else:
        projector = {"0.weight": torch.randn(hidden, MM_HIDDEN), "0.bias": torch.randn(hidden),
                     "2.weight": torch.randn(hidden, hidden), "2.bias": torch.randn(hidden)}
    # LlavaLlamaModel subclasses LlamaModel, so the LLM's names are LLaMA's; LLaVA adds its modules under `model.`
    state = {k: v.clone() for k, v in llm.state_dict().items()}
    state |= {f"model.mm_projector.{k}": v for k, v in projector.items()}
    state["model.vision_tower.vision_tower.vision_model.post_layernorm.weight"] = torch.ones(MM_HIDDEN)
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # saved by transformers < 4.31

    config = llm.config.to_dict()
    config.pop("rope_parameters")
    config.pop("dtype")
    config |= {"model_type": "llava", "architectures": ["LlavaLlamaForCausalLM"], "rope_theta": 10000.0,
               "torch_dtype": "float32", "max_sequence_length": 128, "mm_vision_tower": "openai/clip-vit-large-patch14",
               "mm_hidden_size": MM_HIDDEN, "mm_vision_select_layer": -2, "mm_use_im_start_end": True,
               "use_mm_proj": True, "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False}
    if projector_type != "linear":
        config["mm_projector_type"] = projector_type  # LLaVA v1 had no such key: linear
    config |= config_changes
    (path / "config.json").write_text(json.dumps(config))

    keys = list(state)
    shards = [dict((k, state[k]) for k in keys[: len(keys) // 2]), dict((k, state[k]) for k in keys[len(keys) // 2:])]
    stem, suffix = ("pytorch_model", "bin") if fmt == "bin" else ("model", "safetensors")
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"{stem}-{i + 1:05d}-of-00002.{suffix}"
        torch.save(shard, path / name) if fmt == "bin" else save_file(shard, str(path / name))
        weight_map |= dict.fromkeys(shard, name)
    (path / f"{stem}.{suffix}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    tokenizer.save_pretrained(path)
    return projector


@pytest.mark.parametrize("fmt, projector_type", [("bin", "linear"), ("safetensors", "mlp2x_gelu")])
def test_import_keeps_llm_vocab_and_projector(original, tmp_path, fmt, projector_type):
    llm, tokenizer = original
    src = tmp_path / "llava-7b-finetune"
    projector = llava_checkpoint(src, llm, tokenizer, fmt, projector_type)

    imported = extract_released_llm(src, tmp_path / "llm", projector_out=tmp_path / "projector")

    assert imported.vocab_size == len(tokenizer)
    assert imported.projector_type == projector_type
    assert len(imported.dropped) == len(projector) + 2  # projector, vision tower, rotary buffer
    config = json.loads((tmp_path / "llm/config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert not [k for k in config if k.startswith("mm_") or k == "use_mm_proj"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "llm", trust_remote_code=False).eval()
    assert type(model) is LlamaForCausalLM
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "llm")
    assert loaded_tokenizer.convert_tokens_to_ids(LLAVA_TOKENS) == tokenizer.convert_tokens_to_ids(LLAVA_TOKENS)
    ids = loaded_tokenizer(TEXT + " <im_start>", return_tensors="pt").input_ids
    assert ids[0, -1] == len(tokenizer) - 2  # an added token's row is used, so the extended vocabulary matters
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, llm(input_ids=ids).logits)

    saved = load_file(str(tmp_path / "projector/projector.safetensors"))
    assert saved.keys() == set(LLAVA_PROJECTORS[projector_type].values())
    for k, v in projector.items():
        torch.testing.assert_close(saved[LLAVA_PROJECTORS[projector_type][k]], v)
    meta = json.loads((tmp_path / "projector/projector.json").read_text())
    assert meta["projector_type"] == projector_type and meta["vision_feature_layer"] == -2


def test_missing_shard(original, tmp_path):
    src = tmp_path / "ckpt"
    llava_checkpoint(src, *original)
    (src / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_model-00002-of-00002.bin"):
        extract_released_llm(src, tmp_path / "llm")
    assert not (tmp_path / "llm").exists()


def test_not_llava(original, tmp_path):
    llm, tokenizer = original
    llm.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="not a LLaVA checkpoint"):
        extract_released_llm(tmp_path / "plain", tmp_path / "llm")
    with pytest.raises(FileNotFoundError, match="config.json"):
        extract_released_llm(tmp_path / "nothing", tmp_path / "llm")


def test_delta_refused(original, tmp_path):
    llm, tokenizer = original
    delta = LlamaForCausalLM(llm.config)
    with torch.no_grad():
        for p in delta.parameters():
            p.mul_(1e-3)  # a fine-tuning's change, as make_delta.py leaves when it subtracts the base
    llava_checkpoint(tmp_path / "ckpt", delta, tokenizer)
    with pytest.raises(ValueError, match="is a delta checkpoint"):
        extract_released_llm(tmp_path / "ckpt", tmp_path / "llm")
    assert not (tmp_path / "llm").exists()


def test_shape_disagrees_with_config(original, tmp_path):
    llm, tokenizer = original
    llava_checkpoint(tmp_path / "ckpt", llm, tokenizer, intermediate_size=48)
    with pytest.raises(ValueError, match="mlp.*has shape"):
        extract_released_llm(tmp_path / "ckpt", tmp_path / "llm")


def test_an_imported_checkpoint_with_image_start_end_keeps_its_own_rows(original, tmp_path, params_for, tiny_backbone):
    """The authors' checkpoints were trained with --mm_use_im_start_end: used as our backbone and stage-1 output
    (model.image_start_end on), <im_start> and <im_end> keep the rows the checkpoint trained."""
    from sightbeyond.model.llava import IMAGE_END, IMAGE_START, build_llava, load_processor

    llm, tokenizer = original
    src = tmp_path / "llava-7b-finetune"
    llava_checkpoint(src, llm, tokenizer)
    extract_released_llm(src, tmp_path / "llm", projector_out=tmp_path / "projector")
    params = params_for(**{"backbones.tiny.llm": str(tmp_path / "llm"), "model.image_start_end": True})
    processor = load_processor(params)
    model = build_llava(params, processor.tokenizer, projector_dir=tmp_path / "projector")
    for token in (IMAGE_START, IMAGE_END):
        row = processor.tokenizer.convert_tokens_to_ids(token)
        assert row == tokenizer.convert_tokens_to_ids(token)
        torch.testing.assert_close(model.get_input_embeddings().weight[row], llm.get_input_embeddings().weight[row])
