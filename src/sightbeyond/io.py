"""Outputs appear complete or not at all, so DVC never caches half a stage."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def is_main_process() -> bool:
    """True except in the non-main processes of a distributed run (`accelerate launch`, torchrun)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch directory beside `final`; it replaces `final` only if the block finishes.

    Every process of a distributed run gets the same path (collective saves need one), but only the main process
    creates, renames or removes it.
    """
    final = Path(final)
    scratch = final.with_name(f".{final.name}.partial")
    if not is_main_process():
        yield scratch
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(scratch, ignore_errors=True)  # left by a killed run
    scratch.mkdir()
    try:
        yield scratch
        if final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        scratch.rename(final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_json(path: Path, obj) -> None:
    """Write JSON through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)
