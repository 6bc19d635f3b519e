"""params.yaml is validated before anything loads, and a backbone without weights stops in seconds with a clear error."""

from __future__ import annotations

import time

import pytest

from sightbeyond.cli import main
from sightbeyond.config import ConfigError, load_params
from sightbeyond.model.weights import MissingWeightsError, resolve_backbone

from conftest import ROOT


def test_the_repo_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.backbone in params.backbones


@pytest.mark.parametrize("override, message", [
    ({"stage2.lora.rank": 8}, "rank"),                  # unknown key
    ({"grid.tuning": ["qlora"]}, "qlora"),              # bad value
    ({"backbone": "gpt5"}, "gpt5"),                     # backbone not in the registry
    ({"eval_nlp.source": "local"}, "local_root"),       # local source without its files
])
def test_bad_params_fail_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(ROOT / "params.yaml", overrides=override)


def test_hub_backbone_without_weights_fails_fast_naming_the_param(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = load_params(ROOT / "params.yaml", overrides={"backbone": "llama2"})
    start = time.monotonic()
    with pytest.raises(MissingWeightsError, match=r"meta-llama/Llama-2-7b-hf.*backbones\.llama2\.local_path"):
        resolve_backbone(params)
    assert time.monotonic() - start < 30


def test_local_path_that_does_not_hold_weights_is_named(tmp_path):
    params = load_params(ROOT / "params.yaml", overrides={"backbone": "llama2", "backbones.llama2.local_path": str(tmp_path)})
    with pytest.raises(MissingWeightsError, match=str(tmp_path)):
        resolve_backbone(params)


def test_stage_command_reports_missing_weights_and_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)
    assert main(["-S", "backbone=llama2", "stage1"]) == 2
    assert "backbones.llama2.local_path" in capsys.readouterr().err
