"""Where a backbone's weights come from: a local directory, the local hub cache, or the hub. Fails in seconds."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from sightbeyond.config import KNOWN_VISION, Params, is_hub_id


class MissingWeightsError(RuntimeError):
    pass


@dataclass(frozen=True)
class BackboneWeights:
    llm: str
    vision: str


def _resolve(params: Params, what: str, repo_or_path: str, local_path: str | None, field: str) -> str:
    name, advice, built = params.backbone, _advice(params, field, repo_or_path), params.active.build is not None
    if local_path:
        if (Path(local_path) / "config.json").is_file():
            return local_path
        raise MissingWeightsError(f"backbone {name!r}: {what} weights not found at {local_path}; {advice}")
    if not is_hub_id(repo_or_path):
        if (Path(repo_or_path) / "config.json").is_file():
            return repo_or_path
        hint = f"build it: `sightbeyond -S backbone={name} backbone`, or `dvc exp run -S backbone={name}`" if built else advice
        raise MissingWeightsError(f"backbone {name!r}: no {what} weights at {repo_or_path} ({hint})")
    return _hub(name, what, repo_or_path, advice)


@functools.cache
def _hub(name: str, what: str, repo_id: str, advice: str) -> str:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise MissingWeightsError(f"backbone {name!r}: {what} {repo_id!r} is neither a local directory nor a valid hub "
                                  f"id ({str(err).split(':')[0]})") from None
    with contextlib.suppress(LocalEntryNotFoundError):
        snapshot_download(repo_id, allow_patterns=["config.json"], local_files_only=True)
        return repo_id  # cached
    problem = "offline (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else None
    if problem is None:
        try:
            HfApi().model_info(repo_id, timeout=10)
            return repo_id
        except HfHubHTTPError as err:
            problem = f"the hub refused access ({err.__class__.__name__}: {str(err).splitlines()[0]})"
        except Exception as err:  # no network: DNS or connection errors from requests/httpx
            problem = f"the hub is unreachable ({err.__class__.__name__})"
    raise MissingWeightsError(f"backbone {name!r}: {what} weights {repo_id!r} are not in the local cache and "
                              f"{problem}. Download them elsewhere and {advice}.")


def _advice(params: Params, field: str, repo_or_path: str) -> str:
    """How to point at local weights. A backbone given as a hub id or a path has no registry entry to set."""
    folder = repo_or_path.rstrip("/").split("/")[-1]
    if params.backbone in params.backbones:
        param = f"backbones.{params.backbone}.{field}"
        return f"set {param} in params.yaml to the local directory (or `-S {param}=/path/to/{folder}`)"
    if field == "local_path":
        return f"give the local directory as the backbone: `-S backbone=/path/to/{folder}`"
    return (f"add a registry entry that names both: `-S '+backbones.mine.llm={params.backbone}' "
            f"-S '+backbones.mine.{field}=/path/to/{folder}' -S backbone=mine`")


def resolve_llm(params: Params) -> str:
    return _resolve(params, "LLM", params.active.llm, params.active.local_path, "local_path")


def resolve_backbone(params: Params) -> BackboneWeights:
    b = params.active
    return BackboneWeights(resolve_llm(params), _resolve(params, "vision encoder", b.vision, b.vision_local_path,
                                                         "vision_local_path"))


def hub_revision(resolved: str) -> str | None:
    """The commit of a hub id's cached snapshot (None for a directory, or a repo not cached yet)."""
    if not is_hub_id(resolved):
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(resolved, "config.json")
    return Path(cached).parent.name if isinstance(cached, str) else None


def image_tokens(params: Params) -> int | None:
    """Patch tokens per image: from the vision encoder's config where it is at hand, else from the hub encoders the
    recipes name."""
    b = params.active
    config = Path(b.vision_local_path or b.vision) / "config.json"
    if config.is_file():
        raw = json.loads(config.read_text())
        vision = raw.get("vision_config", raw)
        size, patch = vision.get("image_size", 224), vision.get("patch_size", 14)
    elif b.vision in KNOWN_VISION:
        size, patch = KNOWN_VISION[b.vision]
    else:
        return None
    return (size // patch) ** 2
