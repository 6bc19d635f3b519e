"""TruthfulQA-mc1 and ETHICS during stage 2, logged to the training run at the training step (the paper's Figure 4)."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from sightbeyond.training.common import unwrap_causal_lm


class StepwiseEval(TrainerCallback):
    def __init__(self, tokenizer, tasks: list[str], data_root: Path, *, every: int, limit: int | None, batch_size: int):
        self.tokenizer, self.tasks, self.data_root = tokenizer, tasks, data_root
        self.every, self.limit, self.batch_size = every, limit, batch_size
        self.history: list[tuple[int, dict[str, float]]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._evaluate(model, state)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._evaluate(model, state)

    def _evaluate(self, model, state) -> None:
        import mlflow

        from sightbeyond.evaluation.nlp import evaluate_llm

        if not state.is_world_process_zero or any(step == state.global_step for step, _ in self.history):
            return
        was_training = model.training
        model.eval()
        result = evaluate_llm(unwrap_causal_lm(model), self.tokenizer, self.tasks, self.data_root,
                              limit=self.limit, batch_size=self.batch_size)
        if was_training:
            model.train()
        metrics = {k: v for k, v in result.metrics.items() if not k.endswith("_stderr")}
        self.history.append((state.global_step, metrics))
        mlflow.log_metrics(metrics, step=state.global_step)
