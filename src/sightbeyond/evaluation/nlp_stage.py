"""Stage `eval_nlp`: lm-evaluation-harness on an LLM alone, the untuned base or a tuned one after `extract`."""

from __future__ import annotations

import json
from pathlib import Path

from sightbeyond.config import Params
from sightbeyond.io import write_json

FIXTURES = Path("data/shapesworld/nlp")
RESULTS = Path("results/eval_nlp")


def nlp_data_root(params: Params) -> Path | None:
    """Where the benchmarks' release files are: None for the `hub` source, which reads lm-eval's hub copies."""
    source = params.eval_nlp.source
    if source == "hub":
        return None
    return FIXTURES if source == "fixture" else Path(params.eval_nlp.local_root)


def run(params: Params, model: str) -> None:
    """`model` is `base` or a stage-2 variant `<tuning>-<modality>`."""
    import mlflow
    from transformers import AutoTokenizer

    from sightbeyond.evaluation.nlp import evaluate_llm
    from sightbeyond.model.weights import resolve_llm
    from sightbeyond.tracking.runs import stage_run
    from sightbeyond.training.common import extracted_dir

    if model == "base":
        path, tags = resolve_llm(params), {"tuning": "none", "modality": "none"}
    else:
        tuning, modality = model.split("-")
        path, tags = str(extracted_dir(params, tuning, modality)), {"tuning": tuning, "modality": modality}
        model = f"{params.data}-{model}"  # the cell's name: one LLM per instruction set
    cfg, data_root = params.eval_nlp, nlp_data_root(params)
    inputs = ([] if model == "base" else [Path(path)]) + ([] if data_root is None else [data_root])
    print(f"eval_nlp {model}: {', '.join(cfg.tasks)} ({cfg.source}{'' if data_root is None else f': {data_root}'})")
    with stage_run("eval_nlp", params, name=f"eval_nlp-{params.backbone_key}-{model}", tags=tags | {"model": model},
                   param_sections=("eval_nlp",), inputs=inputs):
        result = evaluate_llm(path, AutoTokenizer.from_pretrained(path), cfg.tasks, cfg.source, data_root,
                              limit=cfg.limit, batch_size=cfg.batch_size, log_samples=True)
        mlflow.log_metrics(result.metrics)
        mlflow.log_dict(result.raw, "lm_eval_results.json")
        for task, samples in result.samples.items():  # lm-eval's per-document records: prompt, responses, metrics
            mlflow.log_text("".join(json.dumps(s) + "\n" for s in samples), f"predictions/{task}.jsonl")
        write_json(RESULTS / f"{params.backbone_key}-{model}.json", result.metrics)
