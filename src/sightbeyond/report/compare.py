"""`sightbeyond compare`: chosen cells or runs, their metrics and deltas with intervals, as a terminal table."""

from __future__ import annotations

import argparse
import re

from sightbeyond.layout import NONE
from sightbeyond.report.reading import Cell, Results, latest
from sightbeyond.report.stats import Bootstrap, stars
from sightbeyond.report.tables import SELECTION_MARKS, SPECS, scale

RUN_ID = re.compile(r"[0-9a-f]{32}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cells", nargs="*", metavar="CELL",
                   help="<backbone>/base, <backbone>/<tuning>-<modality>[/<data>] (data default: --data) or an MLflow "
                        "run id; default: every cell of --stage")
    p.add_argument("--metrics", nargs="+", metavar="METRIC",
                   help="metric names, e.g. ethics/acc truthfulqa_mc1/acc; default: those of the paper's tables")
    p.add_argument("--against", metavar="CELL",
                   help="compare every cell with this one (cell or run id); default: a tuned LLM with its base LLM")
    p.add_argument("--stage", choices=("eval_nlp", "eval_mm", "stage2"), default="eval_nlp",
                   help="the runs a cell name reads (default eval_nlp)")
    p.add_argument("--data", default="full", help="the tuning data of cells named without one (default full)")
    p.add_argument("--commit", help="only runs of this git commit (a prefix of tag git_commit)")
    p.add_argument("--dvc-exp", help="only runs of this DVC experiment (tag dvc_exp)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def default_metrics(stage: str) -> list[str]:
    if stage == "stage2":
        return ["ethics/acc", "truthfulqa_mc1/acc"]
    return list(dict.fromkeys(m for spec in SPECS.values() if spec.stage == stage
                              for column in spec.columns for m in column.metrics))


def records(results: Results, cells: list[Cell], metrics: list[str], boot: Bootstrap,
            against: Cell | None = None) -> list[dict]:
    """One record per (cell, metric) with a value, in the paper's units: the value and its interval, and the delta
    against `against` (default: a tuned LLM's base LLM) with its paired interval and test."""
    out = []
    for cell in cells:
        baseline = against or (Cell.base(cell.backbone) if cell.stage == "eval_nlp" and cell.tuning != NONE else None)
        for metric in metrics:
            value = results.value(cell, metric)
            if value is None:
                continue
            k, est = scale(metric), results.estimate(cell, metric, boot)
            base_value = results.value(baseline, metric) if baseline else None
            c = results.compare(baseline, cell, metric, boot) if base_value is not None else None
            how = results.selected_on(cell, metric)
            out.append({"cell": cell.label + (SELECTION_MARKS[how] if how else ""), "metric": metric, "value": k * value,
                        "ci_low": est and k * est.low, "ci_high": est and k * est.high,
                        "against": baseline.label if baseline else None,
                        "against_found": base_value is not None,
                        "delta": None if base_value is None else k * (value - base_value),
                        "delta_ci_low": c and k * c.low, "delta_ci_high": c and k * c.high,
                        "p_value": c and c.p, "test": c and c.test, "n_docs": c.n if c else est and est.n})
    return out


def render(rows: list[dict]) -> str:
    if not rows:
        return "no runs match"
    header = ["cell", "metric", "value [95% CI]", "vs", "delta [95% CI]", "p", "test", "n"]
    lines = []
    for r in rows:
        value = f"{r['value']:.1f}" + (f" [{r['ci_low']:.1f}, {r['ci_high']:.1f}]" if r["ci_low"] is not None else "")
        against = (r["against"] or "") + ("" if r["against_found"] or not r["against"] else " (missing)")
        delta = "" if r["delta"] is None else f"{r['delta']:+.1f}{stars(r['p_value'])}" + (
            f" [{r['delta_ci_low']:+.1f}, {r['delta_ci_high']:+.1f}]" if r["p_value"] is not None else " [CI n/a]")
        p = "" if r["p_value"] is None else f"{r['p_value']:.3g}"
        lines.append([r["cell"], r["metric"], value, against, delta, p, r["test"] or "", str(r["n_docs"] or "")])
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in [header, *lines]]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out + ["", LEGEND])


LEGEND = ("values in the paper's units; [a, b]: 95% percentile bootstrap over documents (paired for deltas); "
          "* p<0.05 ** p<0.01 *** p<0.001: McNemar mid-p for right/wrong results, else the paired bootstrap; "
          "CI n/a: a run logged no per-document results")


def _cell(text: str, results: Results, args: argparse.Namespace) -> Cell:
    return results.pin(text) if RUN_ID.fullmatch(text) else Cell.parse(text, args.stage, args.data)


def main(args: argparse.Namespace, experiment: str) -> None:
    results = latest(experiment, git_commit=args.commit, dvc_exp=args.dvc_exp)
    cells = [_cell(text, results, args) for text in args.cells] or \
        sorted((c for c in results.cells if c.stage == args.stage), key=lambda c: (c.backbone, c.tuning != NONE, c))
    against = _cell(args.against, results, args) if args.against else None
    boot = Bootstrap(args.resamples, args.seed)
    print(render(records(results, cells, args.metrics or default_metrics(args.stage), boot, against)))
