"""Step-wise evaluation during training, logged to the training run at the training step: the NLP benchmarks during
stage 2 (the paper's Figure 4: TruthfulQA-mc1 and ETHICS; optionally the model of the step where a chosen metric
peaks is kept), and image reliance during stage 1 and the image cells of stage 2."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch

from transformers import TrainerCallback

from sightbeyond.config import ConfigError, Params, Stage1Hparams, Stage2Hparams
from sightbeyond.io import atomic_dir, is_main_process
from sightbeyond.layout import BEST, SELECTION, nlp_data_root
from sightbeyond.tasks.nlp import check_files, fixed_subsample, holdout as held_out, load_tasks, metric_names
from sightbeyond.tasks.reliance import PREFIX, RelianceProbe
from sightbeyond.tasks.stepwise_eval import StepwiseEvaluator
from sightbeyond.training.common import autocast_dtype, unwrap_causal_lm
from sightbeyond.training.resume import Resume



class StepwiseEvalCallback(TrainerCallback):
    """`StepwiseEvaluator` in process on the LLM being trained (LoRA unmerged), every `every` steps, at the start
    and at the end. Tasks are built (and their files checked) here, before any training step; the requests are
    rendered and tokenised once, when training begins. `limit`: a fixed subsample of that many documents per task.
    `data_root`: the release files (`local`, `fixture`), None for lm-eval's hub copies.

    `best_metric` (one of the step-wise metrics, higher is better): each time it improves, the model (for LoRA, the
    adapter and the projector) and its processor are saved to `<output_dir>/best` with `selection.json`, beside the
    Trainer's checkpoints (so a resumed run still has it), and the run is tagged `best_step`, `best_value`; a resumed
    run starts from the tags it already holds. `move_best` then puts it into the stage's output, which `extract` and
    `eval_mm` then read. `holdout`: the metric is measured on that seeded share of the documents alone (logged as
    `selection/<metric>`), which every reported score leaves out; without it, on the reported documents themselves.
    """

    def __init__(self, tokenizer, tasks: list[str], data_root: Path | None, *, every: int, limit: int | None,
                 batch_size: int, logged_through: int = -1, best_metric: str | None = None,
                 add_bos_token: bool | None = None, holdout: float | None = None):
        known = metric_names(tasks)
        if best_metric is not None and best_metric not in known:
            raise ConfigError(f"stage2.best_metric {best_metric!r} is not a step-wise metric of {tasks}: {sorted(known)}")
        source = "hub" if data_root is None else "local"
        check_files(tasks, source, data_root)  # a malformed file named plainly, not from inside lm-eval's task build
        self.tasks = load_tasks(tasks, source, data_root)
        self.held = held_out(tasks, self.tasks, holdout)
        self.holdout = holdout
        self.samples = fixed_subsample(self.tasks, limit, kept_out=self.held)
        if self.held:  # the reported documents and, apart, the ones the best step is chosen on
            self.samples = {name: sorted(ids + self.held.get(name, [])) for name, ids in self.samples.items()}
        self.tokenizer, self.every, self.batch_size, self.add_bos_token = tokenizer, every, batch_size, add_bos_token
        self.prefixes = tuple({name.split("/")[0] for name in known} | {"selection"})  # the metrics it logs
        self.logged_through = logged_through  # a resumed run already holds the steps up to here
        self.best_metric, self.best_value, self.best_dir = best_metric, None, None
        self.evaluator, self.last_step = None, None

    @classmethod
    def from_params(cls, params: Params, tokenizer) -> StepwiseEvalCallback:
        cfg, sizing = params.stage2, params.hparams.stage2
        return cls(tokenizer, cfg.stepwise_tasks, nlp_data_root(params), every=sizing.eval_steps, limit=sizing.stepwise_limit,
                   batch_size=params.eval_nlp.batch_size, best_metric=cfg.best_metric,
                   add_bos_token=params.eval_nlp.add_bos_token, holdout=cfg.selection_holdout)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.best_dir = Path(args.output_dir) / BEST
        # every process scores its share of the documents (DDP: each holds the whole model)
        was_training = model.training
        self.evaluator = StepwiseEvaluator(unwrap_causal_lm(model), self.tokenizer, self.tasks, samples=self.samples,
                                           batch_size=self.batch_size, add_bos_token=self.add_bos_token)
        model.train(was_training)  # the evaluator's tokeniser setup (lm-eval's HFLM) switches it to eval mode
        if self.best_metric is not None and state.is_world_process_zero:
            self.best_value = _best_so_far()
        self._evaluate(args, state, model, kwargs.get("processing_class"))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._evaluate(args, state, model, kwargs.get("processing_class"))

    def _evaluate(self, args, state, model, processing) -> None:
        import mlflow

        if state.global_step == self.last_step or state.global_step <= self.logged_through:
            return
        model.eval()
        dtype = autocast_dtype(args)
        with torch.autocast(model.device.type, dtype=dtype) if dtype else contextlib.nullcontext():  # training's precision
            result = self.evaluator.run()
        model.train()
        self.last_step = state.global_step
        if not state.is_world_process_zero:  # the main process logs and keeps the best model
            return
        metrics, chosen_on = result.metrics, result.metrics
        if self.held:
            held = {name: set(ids) for name, ids in self.held.items()}
            metrics = self.evaluator.metrics({t: [d for d in docs if d.doc_id not in held.get(t, ())]
                                              for t, docs in result.docs.items()})
            chosen_on = self.evaluator.metrics({t: [d for d in docs if d.doc_id in held.get(t, ())]
                                                for t, docs in result.docs.items()})
            metrics |= {f"selection/{name}": value for name, value in chosen_on.items()}
        mlflow.log_metrics(metrics, step=state.global_step)
        if self.best_metric is not None and (self.best_value is None or chosen_on[self.best_metric] > self.best_value):
            self.best_value = chosen_on[self.best_metric]
            selection = {"metric": self.best_metric, "step": state.global_step, "value": self.best_value,
                         "selected_on": "holdout" if self.held else "reported documents", "holdout": self.holdout}
            self._keep(self.best_dir, model, processing, selection)
            mlflow.set_tags({"best_step": state.global_step, "best_value": self.best_value,
                             "selected_on": selection["selected_on"]})

    def move_best(self, out: Path) -> None:
        """Move the best step's model into `out` (as `out/best`): the Trainer's directory goes once stage 2 is done."""
        if self.best_dir is not None and self.best_dir.exists() and is_main_process():
            shutil.move(self.best_dir, Path(out) / BEST)

    @staticmethod
    def _keep(out: Path, model, processing, selection: dict) -> None:
        with atomic_dir(out) as tmp:
            model.save_pretrained(str(tmp))
            if processing is not None:
                processing.save_pretrained(str(tmp))
            (tmp / SELECTION).write_text(json.dumps(selection, indent=2))


def _best_so_far() -> float | None:
    import mlflow

    run = mlflow.active_run()
    value = mlflow.get_run(run.info.run_id).data.tags.get("best_value") if run else None
    return None if value is None else float(value)


class RelianceCallback(TrainerCallback):
    """Image reliance (tasks/reliance.py) on the held-out records during training, every `every` steps, at the start
    and at the end, logged to the training run at the step (`reliance/*`); at the end, the per-record losses as the
    run's table `reliance.json`. `logged_through`: a resumed run already holds the steps up to there."""

    def __init__(self, probe: RelianceProbe, *, every: int, autocast_dtype=None, logged_through: int = -1):
        self.probe, self.every, self.autocast_dtype, self.logged_through = probe, every, autocast_dtype, logged_through
        self.last_step, self.last = None, None

    @classmethod
    def for_trainer(cls, trainer, heldout, hparams: Stage1Hparams | Stage2Hparams, seed: int, resume: Resume):
        """On the held-out records, every `eval_steps`, batched by the trainer's own collator, in its precision."""
        rows = list(heldout)[:hparams.reliance_limit]
        probe = RelianceProbe(rows, trainer.data_collator, trainer.processing_class.image_processor,
                              batch_size=hparams.per_device_train_batch_size, seed=seed)
        return cls(probe, every=hparams.eval_steps, autocast_dtype=autocast_dtype(trainer.args),
                   logged_through=resume.logged_through((PREFIX,)))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step > self.logged_through:
            self._measure(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 and state.global_step > self.logged_through:
            self._measure(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        import mlflow

        result = self.last if state.global_step == self.last_step else self._measure(state, model)
        if state.is_world_process_zero:
            mlflow.log_table(result.table(), artifact_file="reliance.json")

    def _measure(self, state, model):
        import mlflow

        was_training = model.training
        model.eval()
        result = self.probe.run(model, self.autocast_dtype)  # every process: a sharded forward needs them all
        model.train(was_training)
        if state.is_world_process_zero and state.global_step > self.logged_through:
            mlflow.log_metrics(result.metrics(), step=state.global_step)
        self.last_step, self.last = state.global_step, result
        return result
