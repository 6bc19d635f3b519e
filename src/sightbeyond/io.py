"""Outputs appear complete or not at all, so DVC never caches half a stage."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """Settings the user must change; here, below every module that raises it (config, the benchmark libraries)."""


class TrainingFailed(RuntimeError):
    """A training run that ended without the skill later stages need, measured; retrying as is would not help."""


class Strict(BaseModel):
    """A section of a settings file (params.yaml, benchmarks.yaml): unknown keys are refused, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Settings = TypeVar("Settings", bound=BaseModel)


def validated(model: type[Settings], raw, path: Path, what: str) -> Settings:
    """`raw`, a settings file's content, as `model`; else one ConfigError naming the file and each problem's key."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg'].removeprefix('Value error, ')}"
                             + ("" if isinstance(e["input"], dict) else f" (got {repr(e['input'])[:80]})")
                             for e in err.errors())
        raise ConfigError(f"{path}: {what}: {problems}") from None


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
    """Write JSON through a temporary file of this writer's own and an atomic rename: concurrent writers of one file
    each replace it whole, the last one winning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".partial", delete=False) as f:
        f.write(json.dumps(obj, indent=2))
    try:
        os.replace(f.name, path)
    except BaseException:
        os.unlink(f.name)
        raise


class NotWritable(OSError):
    pass


def check_writable(*folders: Path) -> None:
    """Create each folder and a file in it, before hours of compute whose outputs would have nowhere to go."""
    for folder in map(Path, folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise NotWritable(f"{folder}: cannot write outputs there ({err.strerror or err})") from None


_UNDECODED = re.compile("[\udc80-\udcff]")  # the bytes errors="surrogateescape" could not decode


def undecodable(text: str, start: int = 0, end: int | None = None) -> str | None:
    """The reason text read with errors="surrogateescape" is not UTF-8 (its first bad byte), or None."""
    bad = first_undecodable(text, start, end)
    return None if bad is None else f"not UTF-8 text (byte 0x{ord(text[bad]) - 0xDC00:02x})"


def first_undecodable(text: str, start: int = 0, end: int | None = None) -> int | None:
    bad = _UNDECODED.search(text, start, len(text) if end is None else end)
    return None if bad is None else bad.start()
