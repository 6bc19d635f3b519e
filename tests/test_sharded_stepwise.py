"""Step-wise evaluation of a model sharded with FSDP2: two gloo processes on CPU, a tiny LLaMA `fully_shard`-ed over
both, give the unsharded evaluator's scores and every per-document prediction on the same documents."""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM, AutoTokenizer

from sightbeyond.embedded.nlp_fixtures import write_nlp_fixtures
from sightbeyond.tasks.nlp import fixed_subsample, load_tasks
from sightbeyond.tasks.stepwise_eval import StepwiseEvaluator

TASKS = ["ethics_cm", "ethics_deontology", "truthfulqa_mc1"]


def evaluator(llm: Path, data: Path, plan: tuple[int, int], model=None) -> StepwiseEvaluator:
    """The evaluator of `plan` (documents per task, batch size) on the fixtures in `data`."""
    tasks = load_tasks(TASKS, "fixture", data)
    model = model if model is not None else AutoModelForCausalLM.from_pretrained(llm).eval()
    return StepwiseEvaluator(model, AutoTokenizer.from_pretrained(llm), tasks, samples=fixed_subsample(tasks, plan[0]),
                             batch_size=plan[1])


def _sharded(rank: int, llm: str, data: str, out: str, port: int, plan: tuple[int, int]) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    os.environ |= {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port)}
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))  # a hang fails
    from accelerate import PartialState

    assert PartialState(cpu=True).num_processes == 2  # as the Trainer's accelerator sets it up with use_cpu
    model = AutoModelForCausalLM.from_pretrained(llm).eval()
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    assert all(p.to_local().numel() < p.numel() for p in model.parameters() if p.numel() > 1)  # each holds a shard
    scorer = evaluator(Path(llm), Path(data), plan, model)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    result = scorer.run()
    made = [None, None]
    dist.all_gather_object(made, len(calls))
    if rank == 0:
        Path(out).write_text(json.dumps({
            "metrics": result.metrics,
            "docs": {t: [[d.doc_id, d.loglikelihoods, d.is_greedy, d.values] for d in docs] for t, docs in result.docs.items()},
            "forwards": [scorer.scorer.n_forwards(r, 2) for r in range(2)], "calls": made}))
    dist.destroy_process_group()


def test_fsdp2_sharded_scoring_equals_the_unsharded_evaluator(tiny_backbone, tmp_path):
    write_nlp_fixtures(tmp_path / "data", seed=1, n_truthfulqa=6, n_ethics=10)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # documents and batch size whose two shares differ in forward calls: the process with fewer must make up the
    # difference, or the other's all-gathers would wait for ever
    plans = [(n, batch) for n in (5, 7, 8) for batch in (2, 3, 4)]
    shares = {plan: [evaluator(tiny_backbone / "llm", tmp_path / "data", plan).scorer.n_forwards(r, 2) for r in (0, 1)]
              for plan in plans}
    plan = next(plan for plan in plans if len(set(shares[plan])) == 2)
    out = tmp_path / "sharded.json"
    mp.start_processes(_sharded, args=(str(tiny_backbone / "llm"), str(tmp_path / "data"), str(out), port, plan),
                       nprocs=2, start_method="spawn")
    sharded = json.loads(out.read_text())
    assert sharded["forwards"] == shares[plan]
    assert sharded["calls"] == [max(shares[plan])] * 2  # each process called the model alike

    whole = evaluator(tiny_backbone / "llm", tmp_path / "data", plan).run()
    assert sharded["metrics"] == whole.metrics
    # every document's predictions, exactly (through JSON, as the sharded side came)
    assert sharded["docs"] == json.loads(json.dumps(
        {t: [[d.doc_id, d.loglikelihoods, d.is_greedy, d.values] for d in docs] for t, docs in whole.docs.items()}))
