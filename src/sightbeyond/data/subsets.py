"""Stage `subsets`: the paper's per-type ablation sets, drawn (seeded) from the LLaVA-Instruct files.

20k records each from the conversation, detail and complex-reasoning files, and a uniform 20k from the mixed 80k file,
written in the same LLaVA layout so `prepare` reads them like the originals (and makes their text-only variants).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tqdm import tqdm

from sightbeyond.config import ConfigError, Params
from sightbeyond.data.llava_format import INSTRUCT_FILES, BadRecord, Undecodable, find_file, iter_records
from sightbeyond.io import atomic_dir, write_json
from sightbeyond.layout import SUBSETS



def subset_file(name: str, size: int) -> Path:
    return SUBSETS / f"{name}_{size}.json"


def draw(source: Path, size: int, seed: int) -> tuple[list[int], int]:
    """Sorted indices of `size` records drawn uniformly without replacement; only the count is read first."""
    n = sum(1 for _ in tqdm(iter_records(source), desc=f"count {source.name}", unit=" records", mininterval=2))
    if size > n:
        raise ConfigError(f"{source}: {n} records, fewer than subsets.size={size}")
    return sorted(random.Random(seed).sample(range(n), size)), n


def run(params: Params) -> None:
    cfg, root = params.subsets, params.prepare.instruct_dir
    manifest = {}
    with atomic_dir(SUBSETS) as out:
        for name in ("conversation", "detail", "reasoning", "random20k"):
            source = find_file(root, INSTRUCT_FILES["full" if name == "random20k" else name])
            chosen, n = draw(source, cfg.size, cfg.seed)
            wanted = set(chosen)
            target = out / subset_file(name, cfg.size).name
            with target.open("w") as f:  # streamed out as read: one record in memory at a time
                f.write("[")
                written = 0
                for i, record in enumerate(iter_records(source)):
                    if i not in wanted:
                        continue
                    if isinstance(record, Undecodable):
                        raise BadRecord(source, f"#{i}", record.reason)
                    f.write((",\n" if written else "\n") + json.dumps(record))
                    written += 1
                f.write("\n]\n")
            manifest[name] = {"source": str(source), "source_records": n, "records": written, "seed": cfg.seed}
        write_json(out / "manifest.json", manifest)
