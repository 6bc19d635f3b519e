"""Whether a refactor changed what the pipeline makes: every DVC output's hash in dvc.lock now against a git revision's.

    .venv/bin/python scripts/same_outputs.py REV      # after `dvc repro` on the new code

Prints each output whose hash differs (the report's files differ by run ids alone when nothing else changed) and a
count; exit code 1 when any output other than the report's differs.
"""

from __future__ import annotations

import subprocess
import sys

import yaml


def outs(lock: dict) -> dict[str, str]:
    return {out["path"]: out.get("md5") for stage in lock["stages"].values() for out in stage.get("outs", [])}


def main(rev: str) -> int:
    before = outs(yaml.safe_load(subprocess.run(["git", "show", f"{rev}:dvc.lock"], check=True, capture_output=True,
                                                text=True).stdout))
    with open("dvc.lock") as f:
        after = outs(yaml.safe_load(f))
    differ = sorted(path for path, md5 in before.items() if after.get(path) != md5)
    for path in differ:
        print(f"differs: {path}")
    print(f"{len(before) - len(differ)} outputs the same, {len(differ)} different, {len(set(after) - set(before))} new")
    return int(any(not path.startswith("reports/") for path in differ))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
