"""Import a checkpoint saved by the original LLaVA code (`LlavaLlamaForCausalLM`), as the paper's authors released theirs.

The LLM comes out as a plain `LlamaForCausalLM` directory for text evaluation, with the extended vocabulary kept so
token ids line up with the checkpoint's tokenizer; the `mm_projector` can come out in our `projector.safetensors` format.
Shards are read one at a time, so a 13B checkpoint needs about one shard's worth of memory.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from sightbeyond.io import atomic_dir
from sightbeyond.model.llava import PROJECTOR_FILE

LLAVA_MODEL_TYPES = {"llava", "llava_llama", "llava70b"}  # v1.0.1 and the authors' fork; LLaVA >= 1.1; the fork's 70B
PROJECTOR_PREFIX = "model.mm_projector."
VISION_PREFIX = "model.vision_tower."
# LLaVA's mm_projector is nn.Linear or nn.Sequential(Linear, GELU, Linear); ours is LinearProjector or transformers' MLP.
PROJECTOR_KEYS = {
    "linear": {"weight": "linear.weight", "bias": "linear.bias"},
    "mlp2x_gelu": {"0.weight": "linear_1.weight", "0.bias": "linear_1.bias",
                   "2.weight": "linear_2.weight", "2.bias": "linear_2.bias"},
}
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
# A trained LLaMA's final RMSNorm weights average well above 0.1; in a delta (target minus base, LLaVA's make_delta.py)
# they are the fine-tuning's small change. The config of a delta is the target's, so the weights are what tells.
DELTA_NORM_MAX = 0.1


@dataclass(frozen=True)
class Imported:
    vocab_size: int
    projector_type: str | None  # None when the checkpoint has no mm_projector
    dropped: tuple[str, ...]  # source tensors not in the LLM: projector, vision tower, legacy rotary buffers


def extract_released_llm(src: Path, out: Path, projector_out: Path | None = None) -> Imported:
    """Write the LLM of the LLaVA checkpoint `src` to `out` (and its projector to `projector_out`, if given)."""
    src, out = Path(src), Path(out)
    raw = read_llava_config(src)
    config = llama_config(raw)
    expected = expected_shapes(config)
    shards = weight_files(src)
    seen: set[str] = set()
    projector: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    weight_map: dict[str, str] = {}
    total_bytes = 0
    with atomic_dir(out) as tmp:
        parts: list[Path] = []
        for shard in shards:
            kept = {}
            for key, tensor in load_shard(shard).items():
                if key in seen:
                    raise ValueError(f"{shard}: tensor {key!r} appears in more than one shard")
                seen.add(key)
                if key.startswith(PROJECTOR_PREFIX):
                    projector[key.removeprefix(PROJECTOR_PREFIX)] = tensor
                if key.startswith((PROJECTOR_PREFIX, VISION_PREFIX)) or key.endswith("rotary_emb.inv_freq"):
                    dropped.append(key)
                    continue
                if key not in expected:
                    raise ValueError(f"{shard}: tensor {key!r} is not part of a LLaMA with {src / 'config.json'}")
                if tuple(tensor.shape) != expected[key]:
                    raise ValueError(f"{shard}: {key} has shape {tuple(tensor.shape)} but {src / 'config.json'} "
                                     f"implies {expected[key]}")
                kept[key] = tensor.contiguous()
            if "model.norm.weight" in kept:
                refuse_delta(shard, kept["model.norm.weight"])
            if kept:
                part = tmp / f"part-{len(parts)}.safetensors"
                save_file(kept, str(part), metadata={"format": "pt"})
                parts.append(part)
                total_bytes += sum(t.numel() * t.element_size() for t in kept.values())
                weight_map |= dict.fromkeys(kept, part.name)
        missing = sorted(expected.keys() - seen)
        if missing:
            raise ValueError(f"{src}: the shards lack {len(missing)} LLM tensor(s), e.g. {missing[:3]}")
        write_shards(tmp, parts, weight_map, total_bytes)
        config.save_pretrained(tmp)
        copy_tokenizer(src, tmp, config.vocab_size)
        projector_type = projector_format(raw, projector, src) if projector else None
        if projector_out is not None and projector_type is None:
            raise ValueError(f"{src}: no {PROJECTOR_PREFIX}* tensors, so there is no projector to write")
    if projector_out is not None:
        save_projector_weights(raw, projector, projector_type, Path(projector_out))
    return Imported(vocab_size=config.vocab_size, projector_type=projector_type, dropped=tuple(dropped))


def read_llava_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; {src} is not a model checkpoint")
    if (src / "adapter_config.json").is_file():
        raise ValueError(f"{src / 'adapter_config.json'}: a LoRA checkpoint; merge it into its base LLaVA first")
    raw = json.loads(path.read_text())
    if "text_config" in raw:
        raise ValueError(f"{path}: transformers' LlavaForConditionalGeneration layout (text_config), "
                         "not the original LLaVA layout this importer reads")
    model_type = raw.get("model_type")
    architectures = raw.get("architectures") or []
    # LLaVA v0 checkpoints kept model_type "llama"; only their mm_* keys mark them (LLaVA's utils.auto_upgrade).
    has_mm_keys = "use_mm_proj" in raw or any(k.startswith("mm_") for k in raw)
    if not (model_type in LLAVA_MODEL_TYPES or any(a.startswith("Llava") for a in architectures) or has_mm_keys):
        raise ValueError(f"{path}: not a LLaVA checkpoint (model_type {model_type!r}, architectures {architectures}, "
                         "no mm_* keys)")
    if model_type not in LLAVA_MODEL_TYPES | {"llama"}:
        raise ValueError(f"{path}: model_type {model_type!r} is a LLaVA on a non-LLaMA LLM; only LLaMA is supported")
    return raw


def llama_config(raw: dict):
    """LlamaConfig from LLaVA's, without the multimodal keys; legacy keys (rope_theta, torch_dtype) are upgraded."""
    upgraded = LlamaConfig(**{k: v for k, v in raw.items() if k not in ("model_type", "architectures")}).to_dict()
    known = LlamaConfig().to_dict().keys()  # leaves out mm_*, image_aspect_ratio, tune_mm_mlp_adapter, ...
    config = LlamaConfig(**{k: v for k, v in upgraded.items() if k in known})
    config.architectures = ["LlamaForCausalLM"]
    return config


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight")
    return shapes


def weight_files(src: Path) -> list[Path]:
    """The checkpoint's weight files, safetensors first as transformers prefers; every shard an index lists must exist."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = src / index_name
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [n for n in names if not (src / n).is_file()]
            if missing:
                raise FileNotFoundError(f"{index}: lists shard(s) {missing} that are missing from {src}")
            return [src / n for n in names]
        if (src / single).is_file():
            return [src / single]
    raise FileNotFoundError(f"{src}: no model.safetensors[.index.json] or pytorch_model.bin[.index.json]")


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    # mmap: tensors are read as they are written out, not all at once
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def refuse_delta(shard: Path, norm: torch.Tensor) -> None:
    level = norm.float().abs().mean().item()
    if level < DELTA_NORM_MAX:
        raise ValueError(f"{shard}: model.norm.weight averages |w| = {level:.3g}, so this is a delta checkpoint "
                         "(weights minus the base LLaMA); apply it with LLaVA's apply_delta.py first, "
                         "sightbeyond does not apply deltas")


def write_shards(tmp: Path, parts: list[Path], weight_map: dict[str, str], total_bytes: int) -> None:
    """Give the parts transformers' names, with an index when there are several."""
    if len(parts) == 1:
        parts[0].rename(tmp / "model.safetensors")
        return
    names = {p.name: f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors" for i, p in enumerate(parts)}
    for p in parts:
        p.rename(tmp / names[p.name])
    index = {"metadata": {"total_size": total_bytes}, "weight_map": {k: names[v] for k, v in sorted(weight_map.items())}}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def copy_tokenizer(src: Path, dst: Path, vocab_size: int) -> None:
    """Copy the tokenizer files as released, after checking every added token has an embedding row."""
    present = [src / n for n in TOKENIZER_FILES if (src / n).is_file()]
    if not any(p.name in ("tokenizer.model", "tokenizer.json") for p in present):
        raise FileNotFoundError(f"{src}: no tokenizer.model or tokenizer.json; the checkpoint's own tokenizer is "
                                "needed for its token ids to match the extended vocabulary")
    top = max_added_token_id(src)
    if top >= vocab_size:
        raise ValueError(f"{src}: the tokenizer has token id {top} but embed_tokens has {vocab_size} rows")
    for p in present:
        shutil.copy2(p, dst / p.name)


def max_added_token_id(src: Path) -> int:
    """The largest id of an added token (<im_patch>, <im_start>, [PAD], ...) in any tokenizer file that lists them."""
    ids = [-1]
    if (src / "added_tokens.json").is_file():
        ids += json.loads((src / "added_tokens.json").read_text()).values()
    if (src / "tokenizer_config.json").is_file():
        ids += map(int, json.loads((src / "tokenizer_config.json").read_text()).get("added_tokens_decoder", {}))
    if (src / "tokenizer.json").is_file():
        ids += [t["id"] for t in json.loads((src / "tokenizer.json").read_text()).get("added_tokens", [])]
    return max(ids)


def projector_format(raw: dict, projector: dict[str, torch.Tensor], src: Path) -> str:
    """LLaVA's projector type (absent before LLaVA-1.5 means linear), with its tensors checked against the config."""
    projector_type = raw.get("mm_projector_type", "linear")
    renames = PROJECTOR_KEYS.get(projector_type)
    if renames is None:
        raise ValueError(f"{src / 'config.json'}: mm_projector_type {projector_type!r}; only {sorted(PROJECTOR_KEYS)} "
                         "have a counterpart here")
    if projector.keys() != renames.keys():
        raise ValueError(f"{src}: a {projector_type} mm_projector has {sorted(renames)}, found {sorted(projector)}")
    hidden, first = raw["hidden_size"], next(iter(renames))
    vision = raw.get("mm_hidden_size", projector[first].shape[1])
    for key, tensor in projector.items():
        want = (hidden,) if key.endswith("bias") else (hidden, vision if key == first else hidden)
        if tuple(tensor.shape) != want:
            raise ValueError(f"{src}: {PROJECTOR_PREFIX}{key} has shape {tuple(tensor.shape)} but "
                             f"{src / 'config.json'} implies {want}")
    return projector_type


def save_projector_weights(raw: dict, projector: dict[str, torch.Tensor], projector_type: str, out: Path) -> None:
    """Our stage-1 output format (see `load_projector`), plus what multimodal use of it needs to know."""
    renames = PROJECTOR_KEYS[projector_type]
    with atomic_dir(out) as tmp:
        save_file({renames[k]: v.contiguous() for k, v in projector.items()}, str(tmp / PROJECTOR_FILE))
        (tmp / "projector.json").write_text(json.dumps({
            "projector_type": projector_type,
            "vision_tower": raw.get("mm_vision_tower"),
            "vision_feature_layer": raw.get("mm_vision_select_layer", -1),  # LLaVA's default when unset
            "use_im_start_end": raw.get("mm_use_im_start_end", False),
        }, indent=2))
