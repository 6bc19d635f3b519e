"""The step-wise evaluator (tasks built once, reused every step) scores exactly as a fresh lm-eval run does."""

from __future__ import annotations

import torch
from lm_eval.models.huggingface import HFLM
from transformers import AutoModelForCausalLM, AutoTokenizer

from sightbeyond.data.nlp_fixtures import write_nlp_fixtures
from sightbeyond.evaluation.nlp import TASKS, evaluate_llm, evaluate_loaded, load_tasks


def test_reused_tasks_follow_the_weights_and_match_a_fresh_run(tiny_backbone, tmp_path):
    write_nlp_fixtures(tmp_path, seed=1, n_truthfulqa=6, n_ethics=6)
    model = AutoModelForCausalLM.from_pretrained(tiny_backbone / "llm")
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone / "llm")
    tasks = load_tasks(TASKS, tmp_path)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    for _ in range(2):  # the second pass sees changed weights through the same task objects
        reused = evaluate_loaded(lm, tasks)
        fresh = evaluate_llm(model, tokenizer, TASKS, tmp_path, batch_size=4).metrics
        assert reused == {k: v for k, v in fresh.items() if not k.endswith("_stderr")}
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
