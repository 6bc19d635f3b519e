"""Peak memory of `prepare` on a LLaVA-CC3M-Pretrain-595K-sized file: it should not grow with the number of records.

Writes a synthetic `chat.json` of N records in the real layout (each image a link to one small JPEG, so the disk holds
one image), then reads it into a prepared dataset in a fresh process, as the `prepare` stage does, and prints the
peak RSS for each N, split (on Linux) into the process's own memory (RssAnon) and pages of the files it maps
(RssFile: the Arrow files `datasets` writes and reads back, which the kernel can drop under pressure).
Run: `.venv/bin/python benchmarks/prepare_memory.py [--records 10000 595000]`.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

CHILD = """
import sys
from pathlib import Path
from sightbeyond.data.llava_format import read_llava_file
from sightbeyond.data.prepare import save
root = Path(sys.argv[1])
save(lambda: read_llava_file(root / "chat.json", root / "images", on_bad_record="error", with_image=True, plain=True),
     root / "prepared", with_image=True)
"""


def write_release(root: Path, n: int) -> None:
    images = root / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(root / "one.jpg")
    with (root / "chat.json").open("w") as f:
        f.write("[")
        for i in range(n):
            name = f"GCC_train_{i:09d}.jpg"
            (images / name).symlink_to(root / "one.jpg")
            record = {"id": name[:-4], "image": name, "conversations": [
                {"from": "human", "value": "Describe the image concisely.\n<image>"},
                {"from": "gpt", "value": f"a red square number {i} on a dark background, as a caption of CC3M would be"}]}
            f.write(("," if i else "") + json.dumps(record))
        f.write("]")


def run_child(root: Path) -> dict[str, int]:
    """Run the prepare child; the peaks of RssAnon and RssFile in MB, sampled every 50 ms (zeros where /proc is absent)."""
    peaks = {"RssAnon": 0, "RssFile": 0}
    with (root / "prepare.log").open("w+") as log:  # a file, not a pipe: progress bars would fill a pipe and stall it
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(root)], stdout=subprocess.DEVNULL, stderr=log)
        status = Path(f"/proc/{child.pid}/status")
        while child.poll() is None:
            try:
                text = status.read_text()
            except OSError:
                break
            for key in peaks:
                if found := re.search(rf"^{key}:\s+(\d+) kB", text, re.M):
                    peaks[key] = max(peaks[key], int(found.group(1)) // 1024)
            time.sleep(0.05)
        if child.wait():
            log.seek(0)
            sys.exit(f"prepare failed:\n{log.read()[-2000:]}")
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[10_000, 595_000])
    args = parser.parse_args()
    print(f"{'records':>10} {'chat.json MB':>13} {'peak RSS MB':>12} {'anon MB':>8} {'file MB':>8} {'seconds':>8}")
    for n in args.records:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            write_release(root, n)
            start = time.monotonic()
            # a fresh interpreter per size: ru_maxrss of the children is the largest of them so far, so sizes go up
            peaks = run_child(root)
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            size_mb = (root / "chat.json").stat().st_size / 2**20
            print(f"{n:>10} {size_mb:>13.0f} {peak_mb:>12.0f} {peaks['RssAnon']:>8} {peaks['RssFile']:>8} "
                  f"{time.monotonic() - start:>8.0f}")


if __name__ == "__main__":
    main()
