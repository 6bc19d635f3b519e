"""The multimodal model: transformers' LLaVA class over a frozen CLIP and an LLM, and the LLM taken back out of it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from sightbeyond.config import ConfigError, Modality, Params, Tuning
from sightbeyond.data.llava_format import IMAGE_END, IMAGE_START, IMAGE_TOKEN, chat_template, starts_with_bos
from sightbeyond.layout import BEST, Cell
from sightbeyond.model.weights import resolve_backbone, resolve_llm

PROJECTOR_FILE = "projector.safetensors"
# where a template's answer ends when it is not the EOS token: LLaVA's conv_v0 separates rounds with "###"
STOP_STRINGS = {"v0": "###", "conv_vicuna_v0": "###"}
IMAGE_ROWS_FILE = "image_token_rows.safetensors"  # stage 1's rows of <im_start> and <im_end>


class LinearProjector(nn.Module):
    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.linear = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear(image_features)


def make_projector(config: LlavaConfig) -> nn.Module:
    return LinearProjector(config) if getattr(config, "projector_type", "mlp2x_gelu") == "linear" else LlavaMultiModalProjector(config)


class SightLlavaConfig(LlavaConfig):
    # a type of its own: saved as `llava`, a linear projector's weights would be dropped by stock LLaVA, which would
    # build a fresh random MLP in their place; `sight_llava` loads through the Auto classes once sightbeyond is imported
    model_type = "sight_llava"


class SightLlava(LlavaForConditionalGeneration):
    """LLaVA with the projector named by `config.projector_type`.

    Why a subclass: transformers' LLaVA only has LLaVA-1.5's two-layer MLP; the paper (LLaVA v1) uses one linear layer.
    """

    config_class = SightLlavaConfig

    def __init__(self, config: LlavaConfig):
        super().__init__(config)
        self.model.multi_modal_projector = make_projector(config)


class SightLlavaProcessor(LlavaProcessor):
    """LlavaProcessor whose assistant-token masks cost what the tokenizer does.

    Why a subclass: transformers 5.24 builds the masks by walking `offset_mapping` token by token, and TRL's collator
    asks for tensors, so each step is a tensor op: 46 of the 61 ms that a tiny batch of 16 took to collate (a list
    gives the same masks; tests/test_templates.py holds them equal to LlavaProcessor's).
    """

    def _adjust_assistant_masks_indices(self, processed_dict, generation_indices):
        if isinstance(offsets := processed_dict.get("offset_mapping"), torch.Tensor):
            processed_dict["offset_mapping"] = offsets.tolist()
        return super()._adjust_assistant_masks_indices(processed_dict, generation_indices)


AutoConfig.register(SightLlavaConfig.model_type, SightLlavaConfig)
AutoModelForImageTextToText.register(SightLlavaConfig, SightLlava)
AutoProcessor.register(SightLlavaConfig, SightLlavaProcessor)  # saved processors name it; loading finds it here


def load_tokenizer(params: Params, template: str | None = None):
    tokenizer = AutoTokenizer.from_pretrained(resolve_llm(params), trust_remote_code=params.active.trust_remote_code)
    added = [IMAGE_TOKEN, *((IMAGE_START, IMAGE_END) if params.image_start_end else ())]
    if missing := [t for t in added if t not in tokenizer.get_vocab()]:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tokenizer.chat_template = template_for(tokenizer, template or params.active.template, params.image_start_end,
                                           params.active.document_start)
    return tokenizer


def template_for(tokenizer, name: str, image_start_end: bool, document_start: str | None = None) -> str:
    """The chat template `name` as this tokenizer renders it."""
    if name == "chatml" and not {"<|im_start|>", "<|im_end|>"} <= tokenizer.get_vocab().keys():
        raise ConfigError("template chatml needs <|im_start|> and <|im_end|> in the tokenizer's vocabulary; pick the "
                          "backbone's own template (backbones.<name>.template)")
    text = chat_template(name, image_start_end)
    if not starts_with_bos(tokenizer):
        # LLaVA's templates open with the tokenizer's BOS, LLaMA's sequence start. A tokenizer that puts no BOS
        # before text (SmolLM2: its "BOS" is ChatML's <|im_start|> turn marker) was pretrained on documents that
        # follow its `document_start` instead (SmolLM2's <|endoftext|>), or nothing. Without one, stage 1's image
        # would be the sequence's first token, which LLMs use as an attention sink: SmolLM2's projector then grew
        # its image tokens 10 times the text's norm and its caption loss stalled at 4-5 nats/token (with
        # <|endoftext|> first: 1.45 after 60 steps).
        text = "{%- set bos_token = " + repr(document_start or "") + " -%}\n" + text
    return text


def load_processor(params: Params, template: str | None = None) -> SightLlavaProcessor:
    weights = resolve_backbone(params)
    tokenizer = load_tokenizer(params, template)
    image_processor = AutoImageProcessor.from_pretrained(weights.vision)
    vision = CLIPVisionConfig.from_pretrained(weights.vision)
    return SightLlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" feature selection
        chat_template=tokenizer.chat_template,
    )


def load_llm(params: Params, tokenizer) -> PreTrainedModel:
    llm = AutoModelForCausalLM.from_pretrained(resolve_llm(params), dtype=torch.float32,
                                               trust_remote_code=params.active.trust_remote_code)
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:  # the image token is new to a hub LLM
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    llm.config.pad_token_id = tokenizer.pad_token_id
    return llm


def build_llava(params: Params, tokenizer, projector_dir: Path | None = None, llm: PreTrainedModel | None = None) -> SightLlava:
    """Assemble LLaVA from the backbone's LLM (or `llm`) and CLIP (and a stage-1 projector, if given) without copying
    weights."""
    llm = llm if llm is not None else load_llm(params, tokenizer)
    vision = CLIPVisionModel.from_pretrained(resolve_backbone(params).vision, dtype=torch.float32)
    config = SightLlavaConfig(
        vision_config=vision.config,
        text_config=llm.config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=params.model.vision_feature_layer,
        vision_feature_select_strategy="default",
        projector_type=params.projector,
        projector_hidden_act="gelu",
        tie_word_embeddings=llm.config.tie_word_embeddings,
    )
    with torch.device("meta"):  # the towers below replace every meta module; only the projector is new
        model = SightLlava(config)
    model.model.vision_tower = vision
    model.model.language_model = llm.get_decoder()
    model.lm_head = llm.get_output_embeddings()
    model.model.multi_modal_projector = make_projector(config).to(llm.dtype)  # the one module not loaded from a tower
    if projector_dir is not None:
        load_projector(model, projector_dir, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def image_token_ids(model: SightLlava, tokenizer) -> list[int]:
    """The ids of <im_start> and <im_end>, when the tokenizer has them (model.image_start_end)."""
    return [tokenizer.convert_tokens_to_ids(t) for t in (IMAGE_START, IMAGE_END) if t in tokenizer.get_vocab()]


@torch.no_grad()
def scale_projector_to_text(model: SightLlava, pixel_values: torch.Tensor) -> float:
    """Scale a fresh projector's last layer so that its image tokens, on these images, have the mean norm of the
    LLM's token embeddings; returns the factor. With torch's initialisation they start 10-100 times larger than the
    text they sit among (CLIP's features are large: measured 28.8 against 3.2 on SmolLM2, 13 against 0.27 on the tiny
    backbone), and a short stage 1 spends its steps shrinking them, or never does."""
    features = model.model.get_image_features(pixel_values=pixel_values, vision_feature_layer=model.config.vision_feature_layer,
                                              vision_feature_select_strategy=model.config.vision_feature_select_strategy)
    image = torch.cat(list(features.pooler_output)).norm(dim=-1).mean()
    text = model.get_input_embeddings().weight.norm(dim=-1).mean()
    last = [m for m in model.model.multi_modal_projector.modules() if isinstance(m, nn.Linear)][-1]
    factor = (text / image).item()
    last.weight.mul_(factor)
    if last.bias is not None:
        last.bias.mul_(factor)
    return factor


def save_projector(model: SightLlava, state: dict[str, torch.Tensor], out: Path, tokenizer) -> None:
    """The projector and the image tokens' embedding rows, read from `state`, the model's whole state dict: under
    FSDP or ZeRO-3 the model's own parameters are shards, and the trainer's accelerator gathers them into `state`."""
    projector = "model.multi_modal_projector."
    save_file({k[len(projector):]: v.detach().contiguous() for k, v in state.items() if k.startswith(projector)},
              str(out / PROJECTOR_FILE))
    rows = image_token_ids(model, tokenizer)
    if rows:
        embeddings = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
        weight = state[embeddings].detach()
        save_file({token: weight[i].contiguous() for token, i in zip((IMAGE_START, IMAGE_END), rows)},
                  str(out / IMAGE_ROWS_FILE))
    (out / "projector.json").write_text(json.dumps({"projector_type": model.config.projector_type,
                                                    "use_im_start_end": bool(rows)}))


def load_projector(model: SightLlava, stage1_dir: Path, tokenizer) -> None:
    saved = json.loads((stage1_dir / "projector.json").read_text())
    if saved["projector_type"] != model.config.projector_type:
        raise ConfigError(f"{stage1_dir}: stage-1 projector is {saved['projector_type']!r} but this run's (model.projector, "
                          f"else the preset's projector) is {model.config.projector_type!r}")
    rows = image_token_ids(model, tokenizer)
    if saved.get("use_im_start_end", False) != bool(rows):
        raise ConfigError(f"{stage1_dir}: stage 1 ran with{'' if saved.get('use_im_start_end') else 'out'} image "
                          f"start/end tokens, this model {'has' if rows else 'has not'} them (model.image_start_end)")
    model.model.multi_modal_projector.load_state_dict(load_file(str(stage1_dir / PROJECTOR_FILE)))
    if rows and (stage1_dir / IMAGE_ROWS_FILE).is_file():  # an imported LLaVA checkpoint's LLM holds its own rows
        trained = load_file(str(stage1_dir / IMAGE_ROWS_FILE))
        with torch.no_grad():
            for token, i in zip((IMAGE_START, IMAGE_END), rows):
                model.get_input_embeddings().weight[i] = trained[token]


def language_model_view(llava: LlavaForConditionalGeneration) -> PreTrainedModel:
    """The LLaVA's LLM as a causal LM sharing its modules (no copy): what lm-eval and `extract` see."""
    text_config = llava.config.get_text_config()
    with torch.device("meta"):
        causal_lm = AutoModelForCausalLM.from_config(text_config)
    setattr(causal_lm, causal_lm.base_model_prefix, llava.model.language_model)
    causal_lm.lm_head = llava.lm_head
    causal_lm.generation_config = llava.generation_config
    return causal_lm


def tuned_dir(params: Params, tuning: Tuning, modality: Modality) -> Path:
    """The stage-2 model the evaluations read: the best step's where stage2.best_metric chose one, else the last."""
    out = Cell.of(params, tuning, modality).stage2_dir
    return out / BEST if params.stage2.best_metric is not None and (out / BEST).is_dir() else out


def text_cell_with_vision(params: Params, tuning: Tuning) -> tuple[SightLlava, LlavaProcessor]:
    """A text-only-tuned LLM given the image path it never trained with (CLIP and the stage-1 projector): what the
    image cells' multimodal scores are contrasted with."""
    llm, _ = load_tuned(params, tuning, "text")
    processor = load_processor(params)
    return build_llava(params, processor.tokenizer, Cell.of(params).stage1_dir, llm=llm).eval(), processor


def load_tuned(params: Params, tuning: Tuning, modality: Modality):
    """The stage-2 model with LoRA merged, and its processor (image) or tokenizer (text)."""
    from peft import PeftModel

    path = tuned_dir(params, tuning, modality)
    if modality == "image":
        processing = AutoProcessor.from_pretrained(path)
        tokenizer = processing.tokenizer
        if tuning == "ft":
            return SightLlava.from_pretrained(path).eval(), processing
        base = build_llava(params, tokenizer, projector_dir=Cell.of(params).stage1_dir)
    else:
        processing = tokenizer = AutoTokenizer.from_pretrained(path)
        if tuning == "ft":
            return AutoModelForCausalLM.from_pretrained(path).eval(), processing
        base = load_llm(params, tokenizer)
    return PeftModel.from_pretrained(base, path).merge_and_unload().eval(), processing
