"""Does the image path carry anything? The goals of issue 22, read back from the MLflow runs of one backbone.

For the backbone's latest finished runs (`sightbeyond report` reads the same ones): after stage 1, the held-out caption
loss with the right image and the reliance gap (another record's image minus the right one); per image cell, POPE
accuracy on random and adversarial with 95% intervals clustered by image, the yes/no AUC with the right and another
image, MME perception against the score of a constant answer (50 per subtask: acc 0.5, acc+ 0), and COCO-C's
change from clean COCO; per text-only cell (its LLM given CLIP and the stage-1 projector), POPE, which should stay
near chance. Each line says whether its goal is met.

    .venv/bin/python benchmarks/image_reliance.py                 # the tiny default, after `dvc repro`
    .venv/bin/python benchmarks/image_reliance.py -S backbone=smollm2
"""

from __future__ import annotations

import argparse
import warnings

from sightbeyond.cli import _overrides
from sightbeyond.config import load_params
from sightbeyond.report.reading import Cell, latest
from sightbeyond.report.stats import Bootstrap, relative_change
from sightbeyond.tasks.mme import PERCEPTION

# goal -> threshold, per backbone (issue 22); a goal not listed for a backbone is printed without a verdict; None:
# the caller's (MME: the constant answer's score)
GOALS = {
    "smollm2": {"stage1 loss right": ("<=", 0.40), "stage1 gap": (">=", 0.30), "pope_random/acc": (">=", 0.80),
                "pope_adversarial/acc": (">=", 0.75), "mme perception": (">", None), "coco_c below clean": ("<", 0.0)},
    "tiny": {"stage1 gap": (">=", 0.20), "pope_random/acc ft": (">=", 0.70)},
}


def verdict(backbone: str, goal: str, value: float | None, low: float | None = None, high: float | None = None,
            threshold: float | None = None) -> str:
    """`met` / `MISSED` against the goal, judged on the interval's far end where there is one."""
    rule = GOALS.get(backbone, {}).get(goal)
    if rule is None or value is None:
        return ""
    op, threshold = rule[0], threshold if rule[1] is None else rule[1]
    bound = {"<=": high, "<": high, ">=": low, ">": low}[op]
    judged = value if bound is None else bound
    ok = {"<=": judged <= threshold, "<": judged < threshold, ">=": judged >= threshold, ">": judged > threshold}[op]
    return f"  goal {op} {threshold:g}{' (interval)' if bound is not None else ''}: {'met' if ok else 'MISSED'}"


def line(name: str, value, est=None) -> str:
    interval = f" [{est.low:.3f}, {est.high:.3f}]" if est is not None else ""
    return f"{name:<46} {'—' if value is None else f'{value:.3f}'}{interval}"


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override params.yaml")
    params = load_params(overrides=_overrides(cli.parse_args().set))
    backbone, data, boot = params.backbone_key, params.data, Bootstrap(params.report.resamples, params.report.seed, 0.95)
    warnings.simplefilter("ignore")
    results = latest(params.tracking.experiment)
    stage1 = Cell.stage1(backbone)
    print(f"backbone {backbone}, data {data}: the latest finished runs of experiment {params.tracking.experiment}")
    for goal, metric in (("stage1 loss right", "reliance/loss_right"), ("stage1 gap", "reliance/gap")):
        value = results.value(stage1, metric)
        est = results.estimate(stage1, metric, boot) if value is not None else None
        print(line(f"after stage 1: {metric}", value, est) + verdict(backbone, goal, value, est and est.low, est and est.high))
    for tuning in params.grid.tuning:
        for modality in params.grid.modality:
            cell = Cell(backbone, tuning, modality, data, stage="eval_mm")
            print(f"{tuning}-{modality}" + ("" if modality == "image" else " (its LLM with CLIP and the stage-1 projector)"))
            for metric in ("reliance/gap", "pope_random/acc", "pope_adversarial/acc", "pope_random/auc",
                           "pope_random/auc_deranged"):
                value = results.value(cell, metric)
                est = results.estimate(cell, metric, boot) if value is not None else None
                goal = metric if modality == "image" else None
                if metric == "pope_random/acc" and tuning == "ft" and modality == "image" and backbone == "tiny":
                    goal = "pope_random/acc ft"
                print("  " + line(metric, value, est) + (verdict(backbone, goal, value, est and est.low, est and est.high)
                                                       if goal else ""))
            if modality != "image":
                continue
            value = results.value(cell, "mme/perception")
            # a constant answer scores 50 a subtask (acc 0.5, acc+ 0): the subtasks this run scored
            constant = 50.0 * sum(results.value(cell, f"mme/{task}") is not None for task in PERCEPTION)
            est = results.estimate(cell, "mme/perception", boot) if value is not None else None
            print("  " + line(f"mme/perception (constant answer: {constant:g})", value, est)
                  + verdict(backbone, "mme perception", value, est and est.low, est and est.high, threshold=constant))
            clean, corrupted = results.value(cell, "coco/cider"), results.value(cell, "coco_c/cider")
            c = results.compare(cell, cell, "coco/cider", boot, b_metric="coco_c/cider", contrast=relative_change) \
                if clean and corrupted is not None else None
            change = None if not clean or corrupted is None else 100 * (corrupted - clean) / clean
            undefined = "— (no clean run)" if clean is None else "— (clean CIDEr 0)"
            print("  " + f"{'coco_c/cider vs clean coco (% change)':<46} {undefined if change is None else f'{change:+.1f}%'}"
                  + (f" [{c.low:+.1f}, {c.high:+.1f}]" if c else "")
                  + verdict(backbone, "coco_c below clean", change, c and c.low, c and c.high))


if __name__ == "__main__":
    main()
