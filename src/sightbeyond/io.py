"""Reading inputs and writing outputs, below every stage: one error type for an input the user must fix, a lock per
cell so one process works on it at a time, images in one colour model, and outputs that appear complete or not at
all, so DVC never caches half a stage."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class BadInput(ValueError):
    """An input the user must fix (a data or benchmark file, params.yaml, a `-S` override), named with where in it and
    why: the one type every reader raises, which the CLI prints as one line and exit 2, before a model loads."""


class ConfigError(BadInput):
    """Settings the user must change; here, below every module that raises it (config, the benchmark libraries)."""


class MalformedFile(BadInput):
    def __init__(self, path: Path | str, where: str, reason: str):
        super().__init__(f"{path}: {printable(where)}: {printable(reason)}")
        self.reason = reason


def printable(text: str) -> str:
    """`text` with its unprintable characters escaped (a record id of "\\n" would break the one-line error)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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
    shutil.rmtree(scratch, ignore_errors=True)  # left by a killed run
    try:
        scratch.mkdir(parents=True)
    except OSError as err:  # read-only, immutable, full: the folder named, not a bare [Errno N]
        raise NotWritable(f"{final.parent}: cannot write {final.name} there ({err.strerror or err})") from None
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


class Busy(RuntimeError):
    """Another live process holds the lock of the cell this one was asked to work on."""


@contextlib.contextmanager
def exclusive(lock_file: Path, what: str) -> Iterator[None]:
    """Hold `lock_file` with the OS's flock for the block, or raise Busy naming its holder (host, pid, since when).

    The kernel drops the lock with its holder's last file descriptor, SIGKILL included (on NFS, where Linux takes it
    as a POSIX lock on the server, when the dead client's lease runs out), so a dead holder never blocks: the next
    attempt takes the lock over and resumes. The holder's line in the file is what a refused process reports; only
    the main process of a distributed launch takes it (its other processes are its own)."""
    if not is_main_process():
        yield
        return
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)  # never O_TRUNC: that would erase the holder's line
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # a holder that has just taken the lock writes its line a moment later: wait for it (2 s at most)
            for _ in range(40):
                if _holder(fd, default=""):
                    break
                time.sleep(0.05)
            raise Busy(f"{what} is being worked on by {_holder(fd)} (lock {lock_file}); wait for it to end, or stop "
                       "it: a process that dies releases the lock") from None
        if previous := _holder(fd, default=""):
            print(f"{what}: taking over from {previous}, which ended without releasing its lock", flush=True)
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": stamp}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released cleanly: no holder to report
    finally:
        os.close(fd)  # releases the flock


def _holder(fd: int, default: str = "another process (starting just now)") -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"null")
        return f"pid {holder['pid']} on host {holder['host']} since {holder['since']}"
    except (ValueError, TypeError, KeyError):
        return default


SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # PIL's modes for 16-bit grey (PNG, TIFF): `I` on some versions


def image_mode_problem(image) -> str | None:
    """Why `image` (a PIL image) cannot be shown to the vision encoder, or None. Float images have no fixed white
    (0-1? 0-255?), so any scaling would be a guess; 32-bit integer images past 16-bit range likewise."""
    if image.mode == "F":
        return "mode F (32-bit float) images have no fixed range to scale to 8 bits; convert it to 8-bit RGB first"
    if image.mode == "I":
        low, high = image.getextrema()
        if low < 0 or high > 65535:
            return f"mode I (32-bit integer) with values {low}..{high}, past 16-bit range; convert it to 8-bit RGB first"
    return None


def as_rgb(image, where: str):
    """`image` in 8-bit RGB, as CLIP's processor expects. PIL's own convert("RGB") clips 16-bit grey to 255, an
    all-white picture, so 16-bit grey is scaled from its full range (65535 -> 255) first; RGBA, LA, P, CMYK, L and
    1-bit images take PIL's conversion, as LLaVA's loader and the image processor do."""
    import numpy as np
    from PIL import Image

    if problem := image_mode_problem(image):
        raise MalformedFile(where, "image", problem)
    if image.mode in SIXTEEN_BIT:
        grey = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(grey * (255 / 65535)).astype(np.uint8), mode="L")
    return image.convert("RGB")  # a copy, loaded: the file may close after this
