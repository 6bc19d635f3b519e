"""Stage `prepare`: LLaVA-layout files into TRL conversational datasets (stage 1; stage 2 with images and text-only)."""

from __future__ import annotations

import json
from pathlib import Path

from sightbeyond.config import Params
from sightbeyond.data.llava_format import Report, find_instruct_file, read_llava_file
from sightbeyond.io import atomic_dir

PREPARED = Path("data/prepared")


def split_dir(name: str) -> Path:
    """`stage1`, `image` or `text`, or a path to a prepared split."""
    return PREPARED / name if name in ("stage1", "image", "text") else Path(name)


def save(rows: list[dict], out: Path) -> None:
    from datasets import Dataset, Image, Sequence

    dataset = Dataset.from_list(rows)
    if "images" in dataset.column_names:  # paths; decoded lazily when a row is read, never all at once
        dataset = dataset.cast_column("images", Sequence(Image()))
    dataset.save_to_disk(str(out))


def run(params: Params) -> None:
    import mlflow

    from sightbeyond.tracking.runs import stage_run

    cfg = params.prepare
    instruct = find_instruct_file(cfg.instruct_dir, params.grid.data)
    with stage_run("prepare", params, name=f"prepare-{params.grid.data}", param_sections=("prepare",),
                   inputs=[cfg.stage1_file.parent, cfg.instruct_dir]), atomic_dir(PREPARED) as out:
        reports = {"stage1": Report()}
        save(read_llava_file(cfg.stage1_file, cfg.stage1_images, on_bad_record=cfg.on_bad_record, with_image=True,
                             plain=True, report=reports["stage1"]), out / "stage1")
        for modality in ("image", "text"):
            reports[modality] = Report()
            save(read_llava_file(instruct, cfg.instruct_images, on_bad_record=cfg.on_bad_record,
                                 with_image=modality == "image", report=reports[modality]), out / modality)
        summary = {name: r.as_dict() for name, r in reports.items()} | {"instruct_file": str(instruct)}
        (out / "report.json").write_text(json.dumps(summary, indent=2))
        mlflow.log_metrics({f"{name}/{k}": v for name, r in reports.items() for k, v in r.as_dict().items() if k != "reasons"})
        mlflow.log_dict(summary, "prepare_report.json")
        for name, r in reports.items():
            if r.skipped:
                print(f"prepare: skipped {sum(r.skipped.values())} bad records of {r.read} in {name}: {dict(r.skipped)}")
