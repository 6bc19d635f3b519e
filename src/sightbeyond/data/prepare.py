"""Stage `prepare`: LLaVA-layout files into TRL conversational datasets (stage 1; stage 2 with images and text-only)."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
from datasets import Dataset, DatasetDict, Features, Image, List, Value, load_from_disk
from datasets.exceptions import DatasetGenerationError

from sightbeyond.config import Params
from sightbeyond.data.llava_format import INSTRUCT_FILES, ReadCounts, find_file, read_llava_file
from sightbeyond.io import ConfigError, atomic_dir, check_writable
from sightbeyond.data.subsets import subset_file
from sightbeyond.layout import PREPARED, split_dir
from sightbeyond.tasks.reliance import HELDOUT
from sightbeyond.tracking.runs import stage_run

def features(with_image: bool):
    if not with_image:
        return Features({"id": Value("string"), "messages": List({"role": Value("string"), "content": Value("string")})})
    part = {"type": Value("string"), "text": Value("string")}
    # images are stored as paths and decoded when a row is read (in the collator), never all at once
    return Features({"id": Value("string"), "messages": List({"role": Value("string"), "content": List(part)}),
                     "images": List(Image())})


TRAIN = "train"


def heldout_rows(n_rows: int, n: int, seed: int) -> list[int]:
    """The seeded rows kept out of training, for measuring image reliance on records no step has seen: the same
    rows of the same records in every split (image and text-only alike)."""
    if n and n >= n_rows:
        raise ConfigError(f"prepare.heldout {n} leaves none of the {n_rows} records to train on")
    return sorted(random.Random(seed).sample(range(n_rows), n))


def save(rows: Callable[[], Iterator[dict]], out: Path, *, with_image: bool, heldout: int = 0, seed: int = 0) -> None:
    """Write rows to Arrow in batches, so memory stays bounded whatever the number of records, as a DatasetDict:
    `train`, and `heldout` (that many seeded rows, none of them in `train`) when asked for."""
    scratch = out.with_name(f".{out.name}.build")  # a fresh cache: a datasets cache keyed on code alone could be stale
    try:
        dataset = Dataset.from_generator(rows, features=features(with_image), cache_dir=str(scratch))
        kept = heldout_rows(len(dataset), heldout, seed)
        train = dataset.select(sorted(set(range(len(dataset))) - set(kept))) if kept else dataset
        splits = {TRAIN: train} | ({HELDOUT: dataset.select(kept)} if kept else {})
        DatasetDict(splits).save_to_disk(str(out))
        del dataset, train, splits
    except DatasetGenerationError as err:  # the bad record's own error, not datasets' wrapper
        raise (err.__cause__ or err) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_prepared(path: Path, split: str = TRAIN) -> Dataset | None:
    """A prepared split, held in memory (so that TRL's map writes no caches into a DVC output); None for a
    `heldout` split the set was prepared without (prepare.heldout: 0)."""
    splits = load_from_disk(str(path), keep_in_memory=True)
    return splits.get(split) if split == HELDOUT else splits[split]


def instruct_file(params: Params) -> Path:
    """`data: full` is the mixed 80k file as released; the ablation sets come from the `subsets` stage."""
    if params.data == "full":
        return find_file(params.prepare.instruct_dir, INSTRUCT_FILES["full"])

    return subset_file(params.data, params.subsets.size)


def run(params: Params, split: str) -> None:
    """`split` is `stage1` (the caption pairs) or `instruct` (the instruction set `params.data`, with images and
    text-only)."""
    cfg = params.prepare
    if split == "stage1":
        source, images, final, parts = cfg.stage1_file, cfg.stage1_images, split_dir("stage1"), {"stage1": True}
    else:
        source, images, final, parts = instruct_file(params), cfg.instruct_images, PREPARED / params.data, {"image": True, "text": False}
    name = f"prepare-{'stage1' if split == 'stage1' else params.data}"
    check_writable(final.parent)  # before a run starts or a record is read
    with stage_run("prepare", params, name=name, param_sections=("prepare",), inputs=[source.parent]), atomic_dir(final) as out:
        reports = {}
        for part, with_image in parts.items():
            reports[part] = ReadCounts()
            save(lambda: read_llava_file(source, images, on_bad_record=cfg.on_bad_record, with_image=with_image,
                                         plain=split == "stage1", report=reports[part]),
                 out if split == "stage1" else out / part, with_image=with_image, heldout=cfg.heldout, seed=cfg.seed)
        summary = {part: r.as_dict() for part, r in reports.items()} | {"source": str(source)}
        (out / "report.json").write_text(json.dumps(summary, indent=2))
        mlflow.log_metrics({f"{part}/{k}": v for part, r in reports.items() for k, v in r.as_dict().items()
                            if k not in ("reasons", "skipped_ids")})
        mlflow.log_dict(summary, "prepare_report.json")
        for part, r in reports.items():
            if r.skipped:
                print(f"prepare: skipped {sum(r.skipped.values())} bad records of {r.read} in {part}: {dict(r.skipped)} "
                      f"(their ids: {final / 'report.json'}, {part}.skipped_ids)")
