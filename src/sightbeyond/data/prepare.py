"""Stage `prepare`: LLaVA-layout files into TRL conversational datasets (stage 1; stage 2 with images and text-only)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from sightbeyond.config import Params
from sightbeyond.data.llava_format import INSTRUCT_FILES, Report, find_file, read_llava_file
from sightbeyond.io import atomic_dir

PREPARED = Path("data/prepared")


def split_dir(name: str) -> Path:
    """`stage1`, `image` or `text`, or a path to a prepared split."""
    return PREPARED / name if name in ("stage1", "image", "text") else Path(name)


def features(with_image: bool):
    from datasets import Features, Image, List, Value

    if not with_image:
        return Features({"id": Value("string"), "messages": List({"role": Value("string"), "content": Value("string")})})
    part = {"type": Value("string"), "text": Value("string")}
    # images are stored as paths and decoded when a row is read (in the collator), never all at once
    return Features({"id": Value("string"), "messages": List({"role": Value("string"), "content": List(part)}),
                     "images": List(Image())})


def save(rows: Callable[[], Iterator[dict]], out: Path, *, with_image: bool) -> None:
    """Write rows to Arrow in batches, so memory stays bounded whatever the number of records."""
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError

    scratch = out.with_name(out.name + ".build")  # a fresh cache: a datasets cache keyed on code alone could be stale
    try:
        dataset = Dataset.from_generator(rows, features=features(with_image), cache_dir=str(scratch))
    except DatasetGenerationError as err:  # the bad record's own error, not datasets' wrapper
        raise (err.__cause__ or err) from None
    dataset.save_to_disk(str(out))
    del dataset
    shutil.rmtree(scratch)


def instruct_file(params: Params) -> Path:
    """`data: full` is the mixed 80k file as released; the ablation sets come from the `subsets` stage."""
    if params.grid.data == "full":
        return find_file(params.prepare.instruct_dir, INSTRUCT_FILES["full"])
    from sightbeyond.data.subsets import subset_file

    return subset_file(params.grid.data, params.subsets.size)


def run(params: Params) -> None:
    import mlflow

    from sightbeyond.tracking.runs import stage_run

    cfg = params.prepare
    instruct = instruct_file(params)
    with stage_run("prepare", params, name=f"prepare-{params.grid.data}", param_sections=("prepare",),
                   inputs=[cfg.stage1_file.parent, instruct.parent]), atomic_dir(PREPARED) as out:
        reports = {"stage1": Report()}
        save(lambda: read_llava_file(cfg.stage1_file, cfg.stage1_images, on_bad_record=cfg.on_bad_record, with_image=True,
                                     plain=True, report=reports["stage1"]), out / "stage1", with_image=True)
        for modality in ("image", "text"):
            reports[modality] = Report()
            save(lambda: read_llava_file(instruct, cfg.instruct_images, on_bad_record=cfg.on_bad_record,
                                         with_image=modality == "image", report=reports[modality]),
                 out / modality, with_image=modality == "image")
        summary = {name: r.as_dict() for name, r in reports.items()} | {"instruct_file": str(instruct)}
        (out / "report.json").write_text(json.dumps(summary, indent=2))
        mlflow.log_metrics({f"{name}/{k}": v for name, r in reports.items() for k, v in r.as_dict().items() if k != "reasons"})
        mlflow.log_dict(summary, "prepare_report.json")
        for name, r in reports.items():
            if r.skipped:
                print(f"prepare: skipped {sum(r.skipped.values())} bad records of {r.read} in {name}: {dict(r.skipped)}")
