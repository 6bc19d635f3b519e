"""Stage `eval_nlp`: lm-evaluation-harness on an LLM alone, the untuned base or a tuned one after `extract`."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from transformers import AutoTokenizer

from sightbeyond.config import Params
from sightbeyond.io import atomic_dir, check_writable, write_json
from sightbeyond.data.llava_format import starts_with_bos
from sightbeyond.layout import SELECTION, Cell, nlp_data_root
from sightbeyond.model.weights import resolve_llm
from sightbeyond.tasks.nlp import check_files, data_hash, evaluate_llm, fixed_subsample, holdout, load_tasks
from sightbeyond.tracking.runs import logged_model, stage_run


def reported_documents(params: Params, data_root: Path | None) -> dict[str, list[int]] | None:
    """With stage2.selection_holdout, every document but the held-out share that chose the checkpoint, for the base
    LLM too (a delta pairs the same documents); None: all."""
    fraction = params.stage2.selection_holdout
    if fraction is None:
        return None
    cfg = params.eval_nlp
    tasks = load_tasks(cfg.tasks, cfg.source, data_root)
    held = holdout(cfg.tasks, tasks, fraction, among=params.stage2.stepwise_tasks)
    return {name: ids for name, ids in fixed_subsample(tasks, None, kept_out=held).items() if name in held}


def expected(params: Params) -> dict[str, str]:
    """The measurement tags an eval_nlp run of these params carries, BOS aside (the tokenizer's, for the default);
    the documents' hash where the documents are at hand."""
    cfg = params.eval_nlp
    out = {"eval_source": cfg.source, "eval_limit": str(cfg.limit), "eval_dtype": cfg.dtype,
           "eval_holdout": str(params.stage2.selection_holdout)}
    try:
        return out | {"eval_data": data_hash(cfg.tasks, cfg.source, nlp_data_root(params))}
    except FileNotFoundError:
        return out


def measured(params: Params, tokenizer) -> dict[str, str]:
    """What an evaluation measured, as run tags: only runs that agree on all of them can be compared."""
    cfg = params.eval_nlp
    bos = starts_with_bos(tokenizer) if cfg.add_bos_token is None else cfg.add_bos_token
    return expected(params) | {"eval_tasks": ",".join(cfg.tasks), "add_bos_token": str(bos)}


def run(params: Params, model: str) -> None:
    """`model` is `base` or a stage-2 variant `<tuning>-<modality>`."""
    if model == "base":
        cell, path = Cell.of(params), resolve_llm(params)
    else:
        cell = Cell.of(params, *model.split("-"))
        path = str(cell.extracted_dir)
    tags = {"tuning": cell.tuning, "modality": cell.modality}
    cfg, data_root = params.eval_nlp, nlp_data_root(params)
    inputs = ([] if cell.model == "base" else [Path(path)]) + ([] if data_root is None else [data_root])
    print(f"eval_nlp {cell.model}: {', '.join(cfg.tasks)} ({cfg.source}{'' if data_root is None else f': {data_root}'})")
    # what could fail after the model has loaded fails now: the benchmark files, the outputs' folders
    check_files(cfg.tasks, cfg.source, data_root)
    check_writable(cell.results("eval_nlp").parent, cell.predictions("eval_nlp").parent)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if (chosen := Path(path) / SELECTION).is_file():  # stage2.best_metric chose this checkpoint
        selection = json.loads(chosen.read_text())
        tags |= {"selected_on": selection["selected_on"], "selected_step": str(selection["step"])}
    with stage_run("eval_nlp", params, name=cell.run_name("eval_nlp"),
                   tags=tags | {"model": cell.model} | measured(params, tokenizer), param_sections=("eval_nlp",), inputs=inputs):
        result = evaluate_llm(path, tokenizer, cfg.tasks, cfg.source, data_root, limit=cfg.limit,
                              batch_size=cfg.batch_size, log_samples=True, dtype=cfg.dtype,
                              add_bos_token=cfg.add_bos_token, samples=reported_documents(params, data_root))
        # the scores belong to these weights: an external logged model (tiny/smollm2 bases and every tuned LLM)
        model_id = logged_model(params, Path(path), name=f"llm-{cell.key}", model_type="llm") \
            if Path(path).is_dir() else None
        mlflow.log_metrics(result.metrics, model_id=model_id)
        mlflow.log_dict(result.raw, "lm_eval_results.json")
        # lm-eval's per-document records (prompt, responses, metrics): in the run, and as the stage's DVC output, so a
        # clone without that output evaluates (and logs) again
        with atomic_dir(cell.predictions("eval_nlp")) as out:
            for task, samples in result.samples.items():
                (out / f"{task}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
            mlflow.log_artifacts(str(out), "predictions")
        write_json(cell.results("eval_nlp"), result.metrics)
