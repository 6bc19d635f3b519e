"""Can the LLM learn POPE's readout at all under stage 2's recipe, when the scene is given in words?

`pope_diagnosis.py` finds the image in the projector's tokens and, partly, at the answer position, but not in the
LLM's yes/no. This separates the two remaining causes: the LLM (its capacity, or too few steps) or the image tokens
(what the projector makes of a scene). The backbone's base LLM is tuned with the preset's stage-2 recipe (its LoRA
or full fine-tuning, learning rate, batch, bf16) on ShapesWorld conversations whose first turn holds the scene's
caption in words where the image would go, and every `--every` steps answers held-out presence questions about
fresh scenes in words: the AUC of logit(Yes) - logit(No) at the answer's first token (0.5: chance).

    .venv/bin/python benchmarks/presence_from_words.py -S backbone=smollm2 [--steps 20] [--tuning lora]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from sklearn.metrics import roc_auc_score
from tqdm import tqdm
from transformers import TrainerCallback, set_seed
from trl import SFTTrainer

from sightbeyond.cli import _overrides
from sightbeyond.config import load_params
from sightbeyond.embedded import shapesworld as sw
from sightbeyond.model.llava import load_llm, load_tokenizer
from sightbeyond.training.common import bf16 as uses_bf16, sft_config
from sightbeyond.training.stage2 import lora_config


def in_words(rng: random.Random) -> dict:
    """A stage-2 conversation about a fresh scene, its caption where the image goes."""
    scene = sw.sample_scene(rng, rng.randint(1, 3))
    messages = []
    for i, (question, answer) in enumerate(sw.conversation(scene, rng)):
        messages += [{"role": "user", "content": f"{sw.caption(scene)}\n{question}" if i == 0 else question},
                     {"role": "assistant", "content": answer}]
    return {"messages": messages}


def held_out_questions(tokenizer, n_scenes: int = 150, seed: int = 99) -> tuple[list[str], list[bool]]:
    """Per scene, one question about a shape it has and one about a shape it lacks, as generation prompts."""
    rng, prompts, present = random.Random(seed), [], []
    for _ in range(n_scenes):
        scene = sw.sample_scene(rng, rng.randint(1, 3))
        kinds = [s.kind for s in scene]
        for kind in (rng.choice(kinds), rng.choice([k for k in sw.SHAPES if k not in kinds])):
            question = [{"role": "user", "content": f"{sw.caption(scene)}\nIs there {sw.article(kind)} {kind} in the image?"}]
            prompts.append(tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True))
            present.append(kind in kinds)
    return prompts, present


@torch.inference_mode()
def presence_auc(model, tokenizer, prompts: list[str], present: list[bool], batch: int = 50) -> float:
    yes, no = (tokenizer(word, add_special_tokens=False).input_ids[0] for word in ("Yes", "No"))
    scores = []
    for i in range(0, len(prompts), batch):
        inputs = tokenizer(prompts[i:i + batch], padding=True, padding_side="left", return_tensors="pt",
                           add_special_tokens=False)
        logits = model(**inputs).logits[:, -1]
        scores += (logits[:, yes] - logits[:, no]).tolist()
    return float(roc_auc_score(present, scores))


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override params.yaml")
    cli.add_argument("--tuning", choices=("lora", "ft"), default="lora")
    cli.add_argument("--steps", type=int, default=20)
    cli.add_argument("--every", type=int, default=10)
    args = cli.parse_args()
    params = load_params(overrides=_overrides(args.set))
    hparams = params.hparams.stage2
    tokenizer = load_tokenizer(params)
    set_seed(hparams.seed)
    model = load_llm(params, tokenizer)
    rng = random.Random(5)
    data = Dataset.from_list([in_words(rng) for _ in range(args.steps * hparams.global_batch_size)])
    prompts, present = held_out_questions(tokenizer)
    bf16 = uses_bf16(hparams)  # training's precision, for the measurement too

    def measure(step: int) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            tqdm.write(f"step {step:>4}: presence AUC from words {presence_auc(model, tokenizer, prompts, present):.3f}")

    class Measure(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step % args.every == 0:
                kwargs["model"].eval()
                measure(state.global_step)
                kwargs["model"].train()

    print(f"backbone {params.backbone}: {args.tuning}, learning rate {getattr(hparams.learning_rate, args.tuning)}, "
          f"batch {hparams.global_batch_size}, {args.steps} steps, bf16 {bf16}; {len(prompts)} held-out questions")
    measure(0)
    with tempfile.TemporaryDirectory() as out:
        config = sft_config(Path(out), hparams, learning_rate=getattr(hparams.learning_rate, args.tuning), save_steps=None,
                            max_steps=args.steps, per_device_train_batch_size=hparams.global_batch_size,
                            gradient_accumulation_steps=1)
        trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, callbacks=[Measure()],
                             peft_config=lora_config(params, "text") if args.tuning == "lora" else None)
        start = time.perf_counter()
        trainer.train()
    print(f"{args.steps} steps in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
