"""One layout: the paths dvc.yaml declares for each stage's outputs are those the stages write (sightbeyond.layout),
and the package's imports run one way along the pipeline (.importlinter's layers contract)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_dvc_yaml_declares_the_paths_the_stages_write(monkeypatch):
    from dvc.repo import Repo

    monkeypatch.chdir(ROOT)  # DVC names stages relative to the working directory, which a CLI test may have moved

    from sightbeyond.config import load_params
    from sightbeyond.layout import Cell

    params = load_params(ROOT / "params.yaml")
    written = {"stage1": {Cell.of(params).stage1_dir}}
    for data in params.grid.data:
        cell = params.model_copy(update={"data": data})
        for tuning in params.grid.tuning:
            for modality in params.grid.modality:
                c = Cell.of(cell, tuning, modality)
                written[f"stage2@{data}-{tuning}-{modality}"] = {c.stage2_dir}
                written[f"extract@{data}-{tuning}-{modality}"] = {c.extracted_dir}
                written[f"eval_nlp@{data}-{tuning}-{modality}"] = {c.predictions("eval_nlp"), c.results("eval_nlp")}
                written[f"eval_mm@{data}-{tuning}-{modality}"] = {c.predictions("eval_mm"), c.results("eval_mm")}
    base = Cell.of(params)
    written["eval_nlp_base"] = {base.predictions("eval_nlp"), base.results("eval_nlp")}
    with Repo(str(ROOT)) as repo:
        declared = {stage.addressing: {Path(str(out.def_path)) for out in stage.outs} for stage in repo.index.stages}
    assert {name: declared[name] for name in written} == written


def test_imports_run_one_way_along_the_pipeline():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache", "--config", str(ROOT / ".importlinter")], cwd=ROOT / "src",
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def test_the_resume_fingerprint_hashes_the_params_dvc_yaml_declares():
    import yaml

    from sightbeyond.training import stage1, stage2

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, module in (("stage1", stage1), ("stage2", stage2)):
        assert tuple(key.replace("${backbone}", "{backbone}") for key in stages[name]["params"]) == module.PARAMS
