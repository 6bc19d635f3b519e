"""Stage 1: connect the frozen CLIP to the frozen LLM by training only the projector on image-caption pairs.

    dvc repro stage1                                   # as the pipeline runs it: `sightbeyond stage1`, one process
    accelerate launch --config_file configs/accelerate/ddp.yaml -m sightbeyond stage1   # DDP (fsdp / zero2 / zero3)
    dvc exp run -S 'launch=accelerate launch --config_file configs/accelerate/ddp.yaml -m sightbeyond'
"""

from __future__ import annotations

from datasets import load_from_disk
from transformers import set_seed
from trl import SFTTrainer

from sightbeyond.config import Params
from sightbeyond.io import atomic_dir, is_main_process
from sightbeyond.layout import BACKBONES, Cell, split_dir
from sightbeyond.model.llava import build_llava, load_processor, save_projector, train_image_token_rows
from sightbeyond.training.common import check_launch, sft_config
from sightbeyond.training.resume import ResumableMLflowCallback, fingerprint, resumable_run

# the params dvc.yaml declares for this stage (tests/test_layout.py holds them equal): a change to one reruns it
# under DVC, and makes a killed run start afresh rather than resume
PARAMS = ("backbone", "backbones.{backbone}", "model", "preset", "presets", "stage1")


def run(params: Params) -> None:
    hparams, cell = params.hparams.stage1, Cell.of(params)
    # Training arguments: SFTConfig, built (and so checked) before the model loads
    check_launch(hparams, f"presets.{params.preset_name}.stage1")
    work, inputs = cell.trainer_dir("stage1"), [split_dir("stage1")]
    args = sft_config(work, hparams, learning_rate=hparams.learning_rate, save_steps=params.stage1.save_steps,
                      where=f"presets.{params.preset_name}.stage1")

    # Model: seeded before it is built, not only by the Trainer after: the projector's initialisation and the new
    # token rows of a hub LLM's embeddings are drawn before the Trainer exists; only the projector (and, with image
    # start/end tokens, their two embedding rows) trains
    set_seed(hparams.seed)
    processor = load_processor(params, template="plain")
    model = build_llava(params, processor.tokenizer)
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    train_image_token_rows(model, processor.tokenizer)

    # Dataset: held in memory, so that TRL's map writes no caches into a DVC output
    dataset = load_from_disk(str(split_dir("stage1")), keep_in_memory=True)

    # Training, resumed into the same run from the last complete checkpoint when a killed attempt left one
    resumes = fingerprint(params, PARAMS, [*inputs, BACKBONES / params.backbone_key])
    with resumable_run("stage1", params, name=f"stage1-{cell.backbone}", param_sections=("model",), hparams=hparams,
                       inputs=inputs, trainer_dir=work, fingerprint=resumes) as resume, atomic_dir(cell.stage1_dir) as tmp:
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                             callbacks=[ResumableMLflowCallback(resume.logged)])
        trainer.train(resume_from_checkpoint=resume.checkpoint)

        # Save: the projector and the image tokens' rows from the trainer's state dict, and the processor (every process takes part: shards are gathered)
        state = trainer.accelerator.get_state_dict(trainer.model)
        if is_main_process():
            save_projector(model, state, tmp, processor.tokenizer)
            processor.save_pretrained(tmp)
