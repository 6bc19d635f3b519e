"""Stage 1: connect the frozen CLIP to the frozen LLM by training only the projector on image-caption pairs."""

from __future__ import annotations

from sightbeyond.config import Params
from sightbeyond.data.prepare import split_dir
from sightbeyond.io import atomic_dir
from sightbeyond.training.common import sft_config, stage1_dir, trainer_dir, world_size


def run(params: Params) -> None:
    from datasets import load_from_disk
    from trl import SFTTrainer

    from sightbeyond.model.llava import build_llava, load_processor, save_projector
    from sightbeyond.tracking.runs import stage_run

    hparams, out = params.hparams.stage1, stage1_dir(params)
    hparams.grad_accum(world_size())  # a batch that does not divide fails before the model loads
    processor = load_processor(params, template="plain")
    model = build_llava(params, processor.tokenizer)
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    dataset = load_from_disk(str(split_dir("stage1")), keep_in_memory=True)  # no caches written into a DVC output

    with stage_run("stage1", params, name=f"stage1-{params.backbone}", param_sections=("model",), hparams=hparams,
                   inputs=[split_dir("stage1")]), atomic_dir(out) as tmp:
        args = sft_config(trainer_dir(params, "stage1"), hparams, lr=hparams.lr)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
        trainer.train()
        save_projector(model, tmp)
        processor.save_pretrained(tmp)
