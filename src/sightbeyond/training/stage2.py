"""Stage 2: visual instruction tuning with TRL's SFTTrainer: LoRA or full fine-tuning, with images or text-only.

    dvc repro stage2                           # every cell of `grid`: sightbeyond -S data=full stage2 --tuning ...
    sightbeyond -S data=full stage2 --tuning lora --modality image                     # one cell, one process
    accelerate launch --config_file configs/accelerate/ddp.yaml -m sightbeyond stage2 --tuning ft --modality text
    dvc exp run -S presets.tiny.stage2.seed=1   # a seed of the backbone's preset: one DVC experiment per seed
"""

from __future__ import annotations

from peft import LoraConfig
from transformers import set_seed
from trl import SFTTrainer

from sightbeyond.config import Modality, Params, Tuning
from sightbeyond.data.prepare import HELDOUT, load_prepared
from sightbeyond.io import atomic_dir, check_writable, is_main_process
from sightbeyond.layout import BACKBONES, Cell, split_dir
from sightbeyond.model.llava import build_llava, load_llm, load_processor, load_tokenizer
from sightbeyond.tracking.runs import logged_model
from sightbeyond.training.common import accelerate_plugin, check_launch, sft_config, with_projector_lr, world_size
from sightbeyond.training.resume import ResumableMLflowCallback, fingerprint, resumable_run
from sightbeyond.training.stepwise import RelianceCallback, StepwiseEvalCallback

# the params dvc.yaml declares for this stage (tests/test_layout.py holds them equal): a change to one reruns it
# under DVC, and makes a killed run start afresh rather than resume; of eval_nlp, only what the step-wise
# evaluation reads
PARAMS = ("backbone", "backbones.{backbone}", "model", "preset", "presets", "stage2", "eval_nlp.source",
          "eval_nlp.local_root", "eval_nlp.batch_size", "eval_nlp.add_bos_token")
LLM_LINEAR = r"layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def lora_config(params: Params, modality: Modality) -> LoraConfig:
    return LoraConfig(
        **params.hparams.stage2.lora.model_dump(), task_type="CAUSAL_LM",
        # the LLM's linear layers only: never CLIP's, whose layers have the same names
        target_modules=rf"model\.language_model\.{LLM_LINEAR}" if modality == "image" else rf"model\.{LLM_LINEAR}",
        modules_to_save=["multi_modal_projector"] if modality == "image" else None,  # the projector trains fully
    )


def run(params: Params, tuning: Tuning, modality: Modality) -> None:
    cfg, hparams, cell = params.stage2, params.hparams.stage2, Cell.of(params, tuning, modality)
    # Training arguments: the libraries' own config objects, built (and so checked) before the model loads
    check_launch(hparams, f"presets.{params.preset_name}.stage2", stepwise=bool(cfg.stepwise_tasks))
    work = cell.trainer_dir("stage2")
    args = sft_config(work, hparams, learning_rate=getattr(hparams.learning_rate, tuning), save_steps=cfg.save_steps,
                      where=f"presets.{params.preset_name}.stage2")
    peft_config = lora_config(params, modality) if tuning == "lora" else None
    processing = load_processor(params) if modality == "image" else load_tokenizer(params)
    tokenizer = getattr(processing, "tokenizer", processing)
    # the step-wise tasks, metric and benchmark files are checked here, before the model loads or a run starts
    stepwise = StepwiseEvalCallback.from_params(params, tokenizer) if cfg.stepwise_tasks else None
    check_writable(work.parent, cell.stage2_dir.parent)

    # Model: seeded before it is built, not only by the Trainer after: the projector's initialisation, LoRA's and
    # the new token rows of a hub LLM's embeddings are drawn before the Trainer exists
    set_seed(hparams.seed)
    if modality == "image":
        model = build_llava(params, tokenizer, projector_dir=cell.stage1_dir)
        model.model.vision_tower.requires_grad_(False)
    else:
        model = load_llm(params, tokenizer)

    # Dataset: the training records, and (image cells) the held-out ones image reliance is measured on
    dataset = load_prepared(split_dir(modality, params.data))
    heldout = load_prepared(split_dir(modality, params.data), HELDOUT) if modality == "image" else None

    # Training, resumed into the same run from the last complete checkpoint when a killed attempt left one
    inputs = [split_dir(modality, params.data)] + ([cell.stage1_dir] if modality == "image" else [])
    launch = {"world_size": str(world_size()), "accelerate_plugin": accelerate_plugin() or "none"}
    with resumable_run("stage2", params, name=cell.run_name("stage2"), tags={"tuning": tuning, "modality": modality, **launch},
                       param_sections=("model", "stage2"), hparams=hparams, inputs=inputs, trainer_dir=work,
                       fingerprint=fingerprint(params, PARAMS, [*inputs, BACKBONES / params.backbone_key], data=params.data,
                                               tuning=tuning, modality=modality)) as resume:
        with atomic_dir(cell.stage2_dir) as tmp:
            if stepwise is not None:
                stepwise.logged_through = resume.logged_through(stepwise.prefixes)  # the run already holds them
            trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processing,
                                 peft_config=peft_config,
                                 callbacks=[c for c in (stepwise, ResumableMLflowCallback(resume.logged)) if c])
            if heldout is not None:
                trainer.add_callback(RelianceCallback.for_trainer(trainer, heldout, hparams, params.prepare.seed, resume))
            if hparams.mm_projector_lr and modality == "image":
                with_projector_lr(trainer, hparams.mm_projector_lr)
            trainer.train(resume_from_checkpoint=resume.checkpoint)

            # Save: the trainer's collective save (every process takes part under sharding)
            trainer.save_model(str(tmp))
            if stepwise is not None:
                stepwise.move_best(tmp)  # out of the trainer directory, which goes once the run succeeds
            if is_main_process():
                processing.save_pretrained(str(tmp))
        logged_model(params, cell.stage2_dir, name=cell.run_name("stage2"), model_type="stage2")  # the weights, as DVC holds them
