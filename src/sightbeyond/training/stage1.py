"""Stage 1: connect the frozen CLIP to the frozen LLM by training only the projector on image-caption pairs.

    dvc repro stage1                                   # as the pipeline runs it: `sightbeyond stage1`, one process
    accelerate launch --config_file configs/accelerate/ddp.yaml -m sightbeyond stage1   # DDP (fsdp / zero2 / zero3)
    dvc exp run -S 'launch=accelerate launch --config_file configs/accelerate/ddp.yaml -m sightbeyond'
"""

from __future__ import annotations

from transformers import set_seed
from trl import SFTTrainer

from sightbeyond.config import Params
from sightbeyond.data.prepare import HELDOUT, load_prepared
from sightbeyond.io import atomic_dir, check_writable, is_main_process
from sightbeyond.layout import BACKBONES, Cell, split_dir
from sightbeyond.model.llava import build_llava, load_processor, save_projector, scale_projector_to_text
from sightbeyond.training.common import check_launch, sft_config
from sightbeyond.training.resume import ResumableMLflowCallback, fingerprint, resumable_run
from sightbeyond.training.stepwise import RelianceCallback

# the params dvc.yaml declares for this stage (tests/test_layout.py holds them equal): a change to one reruns it
# under DVC, and makes a killed run start afresh rather than resume
PARAMS = ("backbone", "backbones.{backbone}", "model", "preset", "presets", "stage1")


def run(params: Params) -> None:
    hparams, cell = params.hparams.stage1, Cell.of(params)
    # Training arguments: SFTConfig, built (and so checked) before the model loads
    check_launch(hparams, f"presets.{params.preset_name}.stage1")
    work, inputs = cell.trainer_dir("stage1"), [split_dir("stage1")]
    check_writable(work.parent, cell.stage1_dir.parent)  # before the model loads
    args = sft_config(work, hparams, learning_rate=hparams.learning_rate, save_steps=params.stage1.save_steps,
                      where=f"presets.{params.preset_name}.stage1")

    # Dataset: the training pairs, and the held-out ones image reliance is measured on
    dataset, heldout = load_prepared(split_dir("stage1")), load_prepared(split_dir("stage1"), HELDOUT)

    # Model: seeded before it is built, not only by the Trainer after: the projector's initialisation and the new
    # token rows of a hub LLM's embeddings are drawn before the Trainer exists; only the projector trains (the image
    # start/end tokens never occur in LLaVA's stage-1 `plain` layout: their rows are saved as initialised)
    set_seed(hparams.seed)
    processor = load_processor(params, template="plain")
    model = build_llava(params, processor.tokenizer)
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    if params.model.projector_init == "text_scale":
        first = processor.image_processor([row["images"][0] for row in dataset.select(range(min(64, len(dataset))))],
                                          return_tensors="pt").pixel_values
        scale_projector_to_text(model, first)

    # Training, resumed into the same run from the last complete checkpoint when a killed attempt left one
    resumes = fingerprint(params, PARAMS, [*inputs, BACKBONES / params.backbone_key])
    with resumable_run("stage1", params, name=f"stage1-{cell.backbone}", param_sections=("model",), hparams=hparams,
                       inputs=inputs, trainer_dir=work, fingerprint=resumes) as resume, atomic_dir(cell.stage1_dir) as tmp:
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                             callbacks=[ResumableMLflowCallback(resume.logged)])
        if heldout is not None:
            trainer.add_callback(RelianceCallback.for_trainer(trainer, heldout, hparams, params.prepare.seed, resume))
        trainer.train(resume_from_checkpoint=resume.checkpoint)

        # Save: the projector and the image tokens' rows from the trainer's state dict, and the processor (every process takes part: shards are gathered)
        state = trainer.accelerator.get_state_dict(trainer.model)
        if is_main_process():
            save_projector(model, state, tmp, processor.tokenizer)
            processor.save_pretrained(tmp)
