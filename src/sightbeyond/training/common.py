"""What stage 1 and stage 2 share: where outputs go, the SFT arguments, and reaching the LLM inside a wrapped model."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from sightbeyond.config import ConfigError, Params, Stage1Hparams, Stage2Hparams

def accelerate_plugin() -> str | None:
    """The FSDP or DeepSpeed plugin of this launch, which `accelerate launch` announces to its processes."""
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return "FSDP2" if os.environ.get("FSDP_VERSION") == "2" else "FSDP"
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        return f"DeepSpeed ZeRO-{os.environ.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '?')}"
    return None


def check_launch(hparams: Stage1Hparams | Stage2Hparams, where: str, *, stepwise: bool = False) -> None:
    """Refuses, before the model loads, a launch that would not train as its accelerate config says (a global batch
    the processes cannot share is sft_config's to refuse)."""
    plugin = accelerate_plugin()
    if stepwise and plugin in ("FSDP", "DeepSpeed ZeRO-3"):
        # the evaluator runs the LLM outside the trainer's forward: FSDP1's flat parameters and ZeRO-3's partitions
        # are gathered only there (FSDP2's modules gather their own: tasks/stepwise_eval.py scores them sharded)
        raise ConfigError(f"step-wise evaluation needs every process to hold the whole model, or FSDP2; under {plugin} "
                          "it would hang or score garbage. Run it with DDP, ZeRO-2 or FSDP2 (fsdp_version: 2), or "
                          "without step-wise evaluation (-S 'stage2.stepwise_tasks=[]')")
    if plugin and not torch.cuda.is_available():
        # accelerate's AcceleratorState makes CPU processes MULTI_CPU and drops both plugins
        raise ConfigError(f"{plugin} needs CUDA: without it accelerate runs the processes as DDP over gloo and "
                          f"ignores the {plugin} settings, so the model would be replicated, not sharded. Launch "
                          "with configs/accelerate/cpu_ddp.yaml on CPUs")


def world_size() -> int:
    """Processes in this run, as `accelerate launch` / torchrun announce them. Not accelerate's PartialState: a
    process-wide singleton, built here before the Trainer builds it with use_cpu, it made a 2-process CPU run count one
    process (tests/test_scaleout.py's loss curve went short)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def sft_config(output_dir: Path, hparams: Stage1Hparams | Stage2Hparams, *, learning_rate: float,
               save_steps: int | None, where: str = "the preset", **overrides):
    """SFTConfig from the preset's fields as they are, and what the project decides for every run; a value SFTConfig
    refuses is a ConfigError naming the preset."""
    from trl import SFTConfig

    fields = hparams.sft_fields() | dict(
        output_dir=str(output_dir),
        learning_rate=learning_rate,
        gradient_accumulation_steps=hparams.grad_accum(world_size(), where),  # the same global batch on any world size
        max_steps=hparams.max_steps or -1,  # -1: the epochs decide
        assistant_only_loss=True,  # the loss covers assistant turns and their end token, as LLaVA's
        bf16=bf16(hparams),
        activation_checkpointing=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # without CUDA, processes launched together join a gloo group
        ddp_find_unused_parameters=False,  # every trainable parameter takes part in every step
        save_strategy="steps" if save_steps else "no",  # checkpoints are what a killed run resumes from
        save_steps=save_steps or 500,
        report_to="none",  # MLflow logging is ResumableMLflowCallback, which knows what a resumed run already holds
        disable_tqdm=False,
    ) | overrides
    if save_steps:  # a checkpoint on a logging step: a resumed run's loss windows are an uninterrupted run's
        fields["logging_steps"] = math.gcd(fields["logging_steps"], save_steps)
    try:
        return SFTConfig(**fields)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: SFTConfig refuses it: {str(err).splitlines()[0]}") from err


def has_bf16() -> bool:
    """Whether this machine does bf16 arithmetic in hardware: CUDA's, or a CPU's AVX512-BF16 / AMX (x86) or BF16
    (Arm) instructions. Elsewhere bf16 autocast on a CPU is emulated, and slower than fp32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = set(" ".join(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                             if line.startswith(("flags", "Features"))).split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def bf16(hparams: Stage1Hparams | Stage2Hparams) -> bool:
    """bf16 autocast for training and step-wise evaluation: the preset's `bf16`, or (null) where the hardware has it
    (measured on SmolLM2 on this project's CPU: a training step 1.7x, a forward pass 1.9x fp32's speed)."""
    return has_bf16() if hparams.bf16 is None else hparams.bf16


def autocast_dtype(args) -> torch.dtype | None:
    """The dtype training runs its forward passes in (SFTConfig's bf16), for evaluations made between steps."""
    return torch.bfloat16 if args.bf16 else None


def unwrap_causal_lm(model: torch.nn.Module):
    """The LLM being trained, as a causal LM: through PEFT (LoRA left unmerged) and LLaVA (vision dropped)."""
    from transformers import LlavaForConditionalGeneration

    from sightbeyond.model.llava import language_model_view

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return language_model_view(base) if isinstance(base, LlavaForConditionalGeneration) else base


def with_projector_lr(trainer, projector_lr: float):
    """LLaVA-1.5's `mm_projector_lr`: the projector in an optimizer parameter group of its own, everything else that
    trains (LoRA's adapters, or the LLM) at the run's learning rate; the Trainer's scheduler scales both. Set on the
    trainer after SFTTrainer has wrapped the model (PEFT), before training; transformers' Trainer has no per-module
    learning rate."""
    from transformers import Trainer

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
    named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    decay = trainer.args.weight_decay
    trainer.optimizer = optimizer_cls([
        {"params": [p for n, p in named if "multi_modal_projector" not in n], "weight_decay": decay},
        {"params": [p for n, p in named if "multi_modal_projector" in n], "weight_decay": decay, "lr": projector_lr},
    ], **kwargs)
    return trainer
