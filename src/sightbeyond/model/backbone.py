"""Stage `backbone`: the selected backbone as every later stage reads it, under models/backbones/<name>/.

`build: tiny` is built from ShapesWorld; `build: gguf` is converted from its GGUF file, with the embedded CLIP beside
it; any other backbone's weights are resolved (a local copy, the hub cache or the hub), and missing ones stop the
pipeline here, in seconds. `backbone.json` records the registry entry and what was resolved: the later stages depend
on this folder, so they rerun when the backbone they use changes, and only then.
"""

from __future__ import annotations

import json
from pathlib import Path

from sightbeyond.config import Params
from sightbeyond.embedded import tiny
from sightbeyond.io import atomic_dir
from sightbeyond.layout import BACKBONES, SYNTH
from sightbeyond.model.gguf import convert, gguf_path, sha256
from sightbeyond.model.weights import hub_revision, resolve_backbone


def backbone_dir(params: Params) -> Path:
    return BACKBONES / params.backbone_key


def run(params: Params) -> None:
    entry = params.active
    source = gguf_path(entry.gguf) if entry.build == "gguf" else None  # a missing file stops before any work
    resolved = None if entry.build else resolve_backbone(params)
    with atomic_dir(backbone_dir(params)) as out:
        if entry.build == "tiny":
            tiny.build(params.tiny_backbone, SYNTH, out, params.synth.image_size, entry.template)
        elif entry.build == "gguf":
            convert(source, out / "llm")
            tiny.build(params.tiny_backbone, SYNTH, out, params.synth.image_size, entry.template, llm=False)
        record = {"backbone": params.backbone, "entry": entry.model_dump(mode="json")}
        if source is not None:  # its content, not where this machine keeps it
            record["gguf_sha256"] = sha256(source)
        if resolved is not None:
            record["resolved"] = {"llm": resolved.llm, "llm_revision": hub_revision(resolved.llm),
                                  "vision": resolved.vision, "vision_revision": hub_revision(resolved.vision)}
        (out / "backbone.json").write_text(json.dumps(record, indent=2) + "\n")
