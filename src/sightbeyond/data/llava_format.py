"""LLaVA-layout records (LLaVA-CC3M-Pretrain-595K, LLaVA-Instruct-150K) into TRL's conversational format.

A record is `{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}`, with `<image>` once in the
human turns. Each bad record stops the stage with its file, id and reason, or is skipped and counted.
"""

from __future__ import annotations

import json
from importlib import resources
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from sightbeyond.io import SIXTEEN_BIT, BadInput, MalformedFile, as_rgb, image_mode_problem, undecodable

IMAGE_TOKEN = "<image>"
# LLaVA v1's `mm_use_im_start_end`: each image's patch tokens between two added tokens
IMAGE_START, IMAGE_END = "<im_start>", "<im_end>"
ROLES = {"human": "user", "gpt": "assistant"}
# LLaVA-Instruct-150K's files, as released
INSTRUCT_FILES = {"full": "llava_instruct_*.json", "conversation": "conversation_*.json",
                  "detail": "detail_*.json", "reasoning": "complex_reasoning_*.json"}



def chat_template(name: str, image_start_end: bool = False) -> str:
    """The conversation template `name` (templates/<name>.jinja: the text stage 1 and 2 train on, and which turns the
    loss covers); an image is written as `image`, which the processor expands to one token per patch. Stage 1's
    `plain` never wraps it: LLaVA's `preprocess_plain` replaces the first turn by a bare <image> after the start/end
    tokens were added, so they first occur (and their rows first train) in stage 2."""
    image = f"{IMAGE_START}{IMAGE_TOKEN}{IMAGE_END}" if image_start_end and name != "plain" else IMAGE_TOKEN
    return ("{%- set image = '" + image + "' -%}\n" +
            resources.files("sightbeyond.data.templates").joinpath(f"{name}.jinja").read_text())


def starts_with_bos(tokenizer) -> bool:
    """Whether the tokenizer begins every text with its BOS, as LLaMA's does."""
    return tokenizer.bos_token_id is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]


class BadRecord(MalformedFile):
    def __init__(self, file: Path, record: str, reason: str):
        super().__init__(file, f"record {record}", reason)


@dataclass
class Undecodable:
    """A record whose bytes are not UTF-8: invalid (skippable) like any other bad record."""

    reason: str


class Invalid(ValueError):
    """What is wrong with one record; `kind` is how skipped records are counted."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


@dataclass
class ReadCounts:
    read: int = 0
    kept: int = 0
    skipped_ids: dict[str, list[str]] = field(default_factory=dict)  # per reason, the records, to find and fix them

    @property
    def skipped(self) -> Counter:
        return Counter({kind: len(ids) for kind, ids in self.skipped_ids.items()})

    def skip(self, record_id: str, kind: str) -> None:
        self.skipped_ids.setdefault(kind, []).append(record_id)

    def as_dict(self) -> dict:
        return {"read": self.read, "kept": self.kept, "skipped": sum(self.skipped.values()), "reasons": dict(self.skipped),
                "skipped_ids": self.skipped_ids}


def find_file(root: Path, pattern: str) -> Path:
    matches = sorted(root.glob(pattern))
    if len(matches) != 1:
        raise FileNotFoundError(f"{root}: expected one file matching {pattern!r}, found {[m.name for m in matches]}")
    return matches[0]


def iter_records(path: Path, chunk_chars: int = 1 << 20) -> Iterator[dict]:
    """Records of a JSON array, one at a time, read in chunks: memory stays bounded on a 595k-record file, and a
    syntax error names the record where it happens."""
    decoder = json.JSONDecoder()
    # bytes that are not UTF-8 decode to lone surrogates, found per record below: the error names the record
    with path.open(encoding="utf-8", errors="surrogateescape") as f:
        buffer, at_eof = f.read(chunk_chars), False
        pos = buffer.find("[")
        if pos < 0 or buffer[:pos].strip():
            raise BadRecord(path, "#0", "not a JSON array")
        pos, index, last_id = pos + 1, 0, None
        while True:
            while True:  # skip separators, refilling the buffer as it runs out
                while pos < len(buffer) and buffer[pos] in " \t\r\n,":
                    pos += 1
                if pos < len(buffer) or at_eof:
                    break
                buffer, pos = f.read(chunk_chars), 0
                at_eof = not buffer
            if pos < len(buffer) and buffer[pos] == "]":
                rest = buffer[pos + 1:] + f.read()
                if rest.strip():
                    raise BadRecord(path, f"#{index}", f"text after the array's closing ']': {rest.strip()[:40]!r}")
                return
            try:
                start = pos
                record, pos = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError as err:
                more = "" if at_eof else f.read(chunk_chars)
                if more:  # the record may just run past the buffer's end: decode it again with more text
                    buffer, pos = buffer[pos:] + more, 0
                    continue
                at_eof = True
                after = f" (after id {last_id})" if last_id is not None else ""
                raise BadRecord(path, f"#{index}{after}", f"unparsable JSON: {err.msg}") from None
            if reason := undecodable(buffer, start, pos):
                record = Undecodable(reason)
            yield record
            last_id, index = record.get("id", index) if isinstance(record, dict) else index, index + 1


def check_image(path: Path) -> str | dict:
    """The image as the prepared dataset stores it: its path, or for 16-bit grey (which the image processor would clip
    to white) the path and its 8-bit RGB conversion as PNG bytes, which datasets decodes in its place."""
    if not path.is_file():
        raise Invalid("missing image", f"image {path} not found")
    try:
        with Image.open(path) as img:
            img.draft("RGB", (32, 32))  # JPEG: decode at reduced scale, still reading the whole stream
            img.load()
            if problem := image_mode_problem(img):
                raise Invalid("image mode", f"image {path}: {problem}")
            if img.mode not in SIXTEEN_BIT:
                return str(path)
            import io

            png = io.BytesIO()
            as_rgb(img, str(path)).save(png, format="PNG")
            return {"path": str(path), "bytes": png.getvalue()}
    except Invalid:
        raise
    except Exception as err:
        raise Invalid("unreadable image", f"image {path} unreadable ({err.__class__.__name__}: {err})") from None


def to_messages(record: dict, *, with_image: bool, plain: bool = False) -> list[dict]:
    """LLaVA turns to TRL messages. With an image, `<image>` becomes an image part at the start of its turn, as LLaVA
    moves it there; without, it is removed (the paper's text-only ablation)."""
    convs = record.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise Invalid("malformed", "no conversations")
    if any(not isinstance(t, dict) or t.get("from") not in ROLES or not isinstance(t.get("value"), str) for t in convs):
        raise Invalid("malformed", "a turn is not {'from': 'human'|'gpt', 'value': str}")
    if not any(t["from"] == "gpt" and t["value"].strip() for t in convs):
        raise Invalid("no assistant turn", "no assistant turn")
    n_images = sum(t["value"].count(IMAGE_TOKEN) for t in convs)
    if n_images != 1 or any(IMAGE_TOKEN in t["value"] for t in convs if t["from"] == "gpt"):
        raise Invalid("image token count", f"{IMAGE_TOKEN} appears {n_images} times (expected once, in a human turn)")
    messages = []
    for turn in convs:
        role, value = ROLES[turn["from"]], turn["value"]
        has_image = IMAGE_TOKEN in value
        text = value.replace(IMAGE_TOKEN, "").strip()
        if with_image:
            parts = ([{"type": "image", "text": None}] if has_image else []) + ([] if plain and role == "user" else [{"type": "text", "text": text}])
            messages.append({"role": role, "content": parts})
        else:
            messages.append({"role": role, "content": text})
    return messages


def read_llava_file(path: Path, image_dir: Path, *, on_bad_record: str, with_image: bool, plain: bool = False,
                    report: ReadCounts | None = None) -> Iterator[dict]:
    """Validated rows `{"id", "messages", "images"}` (images only `with_image`), one at a time."""
    report = report if report is not None else ReadCounts()
    for i, record in enumerate(tqdm(iter_records(path), desc=f"read {path.name}", unit=" records", mininterval=2)):
        report.read += 1
        record_id = str(record.get("id", f"#{i}")) if isinstance(record, dict) else f"#{i}"
        try:
            if isinstance(record, Undecodable):
                raise Invalid("not UTF-8", record.reason)
            if not isinstance(record, dict) or not isinstance(record.get("image"), str):
                raise Invalid("malformed", "no 'image' field")
            messages = to_messages(record, with_image=with_image, plain=plain)
            stored = check_image(image_dir / record["image"])  # the text-only variant is the same records: it keeps the same ones
        except Invalid as err:
            if on_bad_record == "error":
                raise BadRecord(path, record_id, str(err)) from None
            report.skip(record_id, err.kind)
            continue
        row = {"id": record_id, "messages": messages}
        if with_image:
            row["images"] = [stored]
        report.kept += 1
        yield row
    if report.kept == 0:  # else datasets stops with "corresponds to no data", naming neither the file nor why
        reasons = f"every one skipped: {dict(report.skipped)}" if report.skipped else "the array is empty"
        raise BadInput(f"{path}: no usable record of {report.read} read; {reasons}")
