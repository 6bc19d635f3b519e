"""TruthfulQA-mc1 and ETHICS during stage 2, logged to the training run at the training step (the paper's Figure 4)."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from sightbeyond.training.common import unwrap_causal_lm


class StepwiseEval(TrainerCallback):
    """lm-eval in process on the LLM being trained (LoRA unmerged); tasks and model wrapper are built once."""

    def __init__(self, tokenizer, tasks: list[str], data_root: Path, *, every: int, limit: int | None, batch_size: int,
                 logged_through: int = -1):
        from sightbeyond.evaluation.nlp import load_tasks

        self.tasks = load_tasks(tasks, data_root)  # also checks the files before any training step
        self.tokenizer, self.every, self.limit, self.batch_size = tokenizer, every, limit, batch_size
        self.lm, self.last_step = None, None
        self.logged_through = logged_through  # a resumed run already holds the steps up to here

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from lm_eval.models.huggingface import HFLM

        if state.is_world_process_zero:
            self.lm = HFLM(pretrained=unwrap_causal_lm(model), tokenizer=self.tokenizer, batch_size=self.batch_size)
        self._evaluate(model, state)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._evaluate(model, state)

    def _evaluate(self, model, state) -> None:
        import mlflow

        from sightbeyond.evaluation.nlp import evaluate_loaded

        if not state.is_world_process_zero or state.global_step == self.last_step or state.global_step <= self.logged_through:
            return
        model.eval()
        metrics = evaluate_loaded(self.lm, self.tasks, limit=self.limit)
        model.train()
        self.last_step = state.global_step
        mlflow.log_metrics(metrics, step=state.global_step)
