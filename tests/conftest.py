"""Small fixtures the tests build themselves: a random tiny backbone on disk and params that point at it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sightbeyond.config import load_params

ROOT = Path(__file__).resolve().parents[1]
CORPUS = [
    "a red circle and a blue square on a dark background .",
    "Is there a star in the image? No, there is no star in the image.",
    "The green triangle is in the top left of the image.",
    "How many shapes are in the image? There are 3 shapes in the image.",
] * 5


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A randomly initialised LLaMA + CLIP with a trained tokenizer, saved as hub repos are."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, LlamaConfig, LlamaForCausalLM

    from sightbeyond.embedded.tiny import train_tokenizer

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("backbone")
    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False))
    llm.save_pretrained(out / "llm")
    tokenizer.save_pretrained(out / "llm")
    clip = CLIPModel(CLIPConfig(text_config=dict(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=32, max_position_embeddings=32),
                                vision_config=dict(image_size=32, patch_size=16, hidden_size=16, num_hidden_layers=2,
                                                   num_attention_heads=2, intermediate_size=32), projection_dim=16))
    clip.save_pretrained(out / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out / "clip")
    return out


@pytest.fixture
def params_for(tiny_backbone):
    """params.yaml with the tiny backbone pointed at the test's random one, plus any overrides."""

    def make(**overrides):
        base = {"backbones.tiny.llm": str(tiny_backbone / "llm"), "backbones.tiny.vision": str(tiny_backbone / "clip"),
                "backbones.tiny.build": None}  # weights of its own, not the `backbone` stage's
        return load_params(ROOT / "params.yaml", overrides=base | overrides)

    return make


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    import mlflow.tracking.fluent

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    # mlflow remembers the last experiment process-wide (and in the environment): an id from another test's store
    # would not exist in this one
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    return tmp_path / "mlflow.db"


@pytest.fixture
def tiny_project(tmp_path, params_for):
    """A project directory (params.yaml, a prepared text split, NLP fixtures) that `python -m sightbeyond` can run in."""
    import yaml

    from sightbeyond.embedded.nlp_fixtures import write_nlp_fixtures
    from sightbeyond.data.prepare import save

    def make(name: str = "project", rows: int = 200, **overrides) -> Path:
        root = tmp_path / name
        root.mkdir()
        params = params_for(**{"eval_nlp.tasks": ["ethics_cm"], "stage2.stepwise_tasks": ["ethics_cm"], "presets.tiny.stage2.stepwise_limit": 4, **overrides})
        (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
        conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                         for q, a in (line.split("? ", 1) for line in CORPUS if "? " in line)]
        save(lambda: ({"id": str(i), "messages": conversations[i % len(conversations)]} for i in range(rows)),
             root / "data/prepared/full/text", with_image=False)
        write_nlp_fixtures(root / "data/shapesworld/nlp", seed=0, n_truthfulqa=8, n_ethics=8)
        return root

    return make


def run_cli(root: Path, *args: str, wait: bool = True, launcher: tuple[str, ...] = (), store: str | None = None):
    """`sightbeyond` in a child process of its own, as DVC runs it, with the project's MLflow store (or `store`)."""
    import subprocess
    import sys

    env = {**os.environ, "SIGHTBEYOND_ROOT": str(root), "MLFLOW_TRACKING_URI": store or f"sqlite:///{root / 'mlflow.db'}",
           "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [*(launcher or (sys.executable,)), "-m", "sightbeyond", *args]
    proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    return proc


# A clone's params shrunk for end-to-end tests of the pipeline's plumbing: fewer records, a backbone pretrained for a
# few steps, one or two training steps
SMALL = {"synth": {"stage1_pairs": 64, "conversation": 24, "detail": 8, "complex_reasoning": 8, "pope_images": 4,
                   "nlp_fixture_rows": 8, "mme_images": 1, "caption_images": 3, "unicorn_images": 4},
         "tiny_backbone": {"llm_pretrain": {"steps": 10}, "clip_pretrain": {"steps": 10},
                           "reading": {"min_auc": None}},  # 10 steps learn no reading
         "presets": {"tiny": {"stage1": {"max_steps": 1}, "stage2": {"max_steps": 2, "eval_steps": 1}}},
         "subsets": {"size": 8}, "prepare": {"heldout": 8}}


def shrink(clone: Path, commit: bool = False) -> None:
    """Write SMALL into the clone's params.yaml (and commit it, for tests that push the clone)."""
    import subprocess

    import yaml

    def merge(into: dict, changes: dict) -> None:
        for key, value in changes.items():
            merge(into[key], value) if isinstance(value, dict) else into.__setitem__(key, value)

    params = yaml.safe_load((clone / "params.yaml").read_text())
    merge(params, SMALL)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if commit:
        subprocess.run(["git", "commit", "-qam", "shrunk for the test"], cwd=clone, check=True)
