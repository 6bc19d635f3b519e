"""`sightbeyond <stage>`: one subcommand per DVC stage, plus `preview` and `chain`. Parameters come from params.yaml."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import get_args

from sightbeyond.config import ConfigError, InstructData, Modality, Tuning, load_params, project_root
from sightbeyond.model.weights import MissingWeightsError, image_tokens, resolve_backbone, resolve_llm
from sightbeyond.report import compare
from sightbeyond.io import BadInput, Busy, NotWritable, TrainingFailed, exclusive
from sightbeyond.layout import RELEASED
from sightbeyond.tasks.lm_eval_index import UnsupportedLmEval

TUNINGS, MODALITIES = get_args(Tuning), get_args(Modality)
VARIANTS = tuple(f"{t}-{m}" for t in TUNINGS for m in MODALITIES)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sightbeyond", description=__doc__)
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a params.yaml value for this command (YAML value), e.g. -S backbone=llama2")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("synth", help="write ShapesWorld in the real datasets' layouts, and the NLP fixtures")
    sub.add_parser("backbone", help="the selected backbone under models/backbones/<name>: built (tiny), converted (GGUF) "
                                    "or its weights resolved")
    sub.add_parser("check", help="validate params.yaml, print the resolved recipe and resolve the backbone's weights")
    sub.add_parser("subsets", help="the per-type ablation sets (seeded draws from the LLaVA-Instruct files)")
    s = sub.add_parser("prepare", help="LLaVA-layout files into TRL datasets (stage 1; stage 2 with images and text-only)")
    s.add_argument("--split", choices=("stage1", "instruct"), required=True,
                   help="stage1: the caption pairs; instruct: the instruction set `data` (-S data=...)")
    sub.add_parser("stage1", help="train the projector")
    for name, help_ in (("stage2", "visual instruction tuning"), ("extract", "the tuned LLM alone, LoRA merged")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--tuning", choices=TUNINGS, required=True)
        s.add_argument("--modality", choices=MODALITIES, required=True)
    s = sub.add_parser("eval_nlp", help="lm-evaluation-harness on an LLM")
    s.add_argument("--model", required=True, choices=("base", *VARIANTS))
    s = sub.add_parser("eval_mm", help="the multimodal benchmarks (MME, POPE, captions, COCO-C, Unicorn) and image reliance of "
                                       "an image-tuned model, or of a text-only one given the stage-1 projector")
    s.add_argument("--tuning", choices=TUNINGS, required=True)
    s.add_argument("--modality", choices=MODALITIES, default="image")
    s = sub.add_parser("chain", help="one backbone's chain as a DVC experiment (the MLproject entry point)")
    s.add_argument("--backbone", required=True)
    s.add_argument("--tuning", choices=TUNINGS, required=True)
    s.add_argument("--modality", choices=MODALITIES, required=True)
    s.add_argument("--data", choices=get_args(InstructData), required=True)
    s.add_argument("--preset", default="backbone", help="a key of presets, or `backbone` for the backbone's own")
    s = sub.add_parser("import_released", help="a checkpoint in LLaVA's training layout: its LLM (and projector) for evaluation")
    s.add_argument("--src", type=Path, required=True, help="the released checkpoint directory")
    s.add_argument("--out", type=Path, help="default: models/released/<src name>")
    sub.add_parser("report", help="the paper's tables and figures, with intervals, from the MLflow runs, in reports/")
    s = sub.add_parser("compare", help="chosen cells or runs: metrics, deltas and intervals, in the terminal")
    compare.add_arguments(s)
    s = sub.add_parser("preview", help="print what the model sees and what it is trained on, for the first records")
    s.add_argument("--split", required=True, help="stage1 | image | text, or a prepared dataset directory")
    s.add_argument("--n", type=int, default=3)
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    return p


def _overrides(pairs: list[str]) -> dict:
    import yaml

    from sightbeyond.config import yaml_problem

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"-S {pair!r}: expected KEY=VALUE")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = yaml_problem(err) if "\n" in value else yaml_problem(err).replace("line 1, column", "column")
            raise ConfigError(f"-S {pair!r}: the value {value!r} is not valid YAML: {problem}") from None
    return out


def _lock(params, args) -> tuple[Path, str] | None:
    """The lock a command holds while it works (layout.Cell.lock), and what it works on, in words; None for the
    commands that write nothing of a cell's."""
    from sightbeyond.layout import LOCKS, Cell

    command = args.command
    if command in ("stage1", "stage2", "extract", "eval_mm"):
        cell = Cell.of(params, *((args.tuning, args.modality) if command != "stage1" else ()))
    elif command == "eval_nlp":
        cell = Cell.of(params, *(() if args.model == "base" else args.model.split("-")))
    elif command in ("synth", "subsets", "report", "backbone", "prepare"):
        what = {"backbone": params.backbone_key, "prepare": "stage1" if getattr(args, "split", "") == "stage1" else params.data}
        name = "-".join(filter(None, (command, what.get(command))))
        return LOCKS / f"{name}.lock", name
    else:
        return None
    return cell.lock(command), f"{command} of {cell.backbone if command == 'stage1' else cell.key}"


def _stage(module: str, *fields: str):
    """A stage's command: `sightbeyond.<module>.run(params, *args.<fields>)`, imported only when asked for."""
    def call(params, args):
        import importlib

        importlib.import_module(f"sightbeyond.{module}").run(params, *(getattr(args, f) for f in fields))
    return call


def _chain(params, args) -> int:
    import json
    import subprocess

    targets = ["eval_nlp_base", "eval_nlp", "eval_mm"]
    sets = [f"-S{key}={json.dumps(value)}" for key, value in args.overrides.items()]
    return subprocess.run(["dvc", "exp", "run", *sets, *targets]).returncode


def _import_released(params, args) -> None:
    from sightbeyond.model.released import extract_released_llm

    out = args.out or RELEASED / args.src.name
    try:
        imported = extract_released_llm(args.src, out / "llm", projector_out=out / "projector")
    except ValueError as err:  # not a checkpoint we can read: the user's to fix
        raise ConfigError(str(err)) from None
    print(f"{out / 'llm'}: LlamaForCausalLM, vocabulary {imported.vocab_size}, projector {imported.projector_type}; "
          f"evaluate it with `sightbeyond -S backbone={out / 'llm'} eval_nlp --model base`")


COMMANDS = {
    "synth": _stage("embedded.shapesworld"), "backbone": _stage("model.backbone"),
    "check": lambda params, args: print(resolve_backbone(params)),
    "subsets": _stage("data.subsets"), "prepare": _stage("data.prepare", "split"), "stage1": _stage("training.stage1"),
    "stage2": _stage("training.stage2", "tuning", "modality"), "extract": _stage("model.extract", "tuning", "modality"),
    "eval_nlp": _stage("evaluation.nlp_stage", "model"), "eval_mm": _stage("evaluation.mm_stage", "tuning", "modality"),
    "chain": _chain, "import_released": _import_released, "report": _stage("report.build"),
    "compare": lambda params, args: compare.main(args, params.tracking.experiment),
    "preview": _stage("training.preview", "split", "n", "json"),
}


def _leave_process_group() -> None:
    """Every process of a launched stage leaves its gloo/NCCL group before exit, where its threads would abort."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        os.chdir(project_root())  # paths in params.yaml and dvc.yaml are relative to the project root
        overrides = _overrides(args.set)
        if args.command == "chain":
            overrides |= {"backbone": args.backbone, "grid.tuning": [args.tuning], "grid.modality": [args.modality],
                          "grid.data": [args.data], "preset": None if args.preset == "backbone" else args.preset}
        params = load_params(overrides=overrides)
        args.overrides = overrides
        params._command_line = _overrides(args.set)
        if args.command == "check":  # the recipe first: it needs no weights
            print(params.recipe(image_tokens(params)))
        # missing weights stop every stage in seconds, before data is read
        if args.command in ("check", "stage1", "eval_mm") or (args.command == "stage2" and args.modality == "image"):
            resolve_backbone(params)
        elif args.command in ("stage2", "extract", "eval_nlp") or (args.command == "chain" and not params.active.build):
            # (a chain builds a backbone the pipeline builds: its weights need not exist yet)
            resolve_llm(params)
        # one process per cell: a second one stops here, before it touches the first one's checkpoints or run
        lock = _lock(params, args)
        with exclusive(*lock) if lock else contextlib.nullcontext():
            return COMMANDS[args.command](params, args) or 0
    except (BadInput, Busy, MissingWeightsError, NotWritable, UnsupportedLmEval, TrainingFailed, FileNotFoundError,
            PermissionError) as err:
        # the user's to fix: one line, no traceback
        print(f"sightbeyond {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()


if __name__ == "__main__":
    sys.exit(main())
