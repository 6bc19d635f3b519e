"""Stage `report`: the paper's tables and figures rebuilt from the MLflow runs, written to reports/ (one folder per
kind of output, so DVC can declare each; reports/README.md, written by `_readme`, says what each file shows) and
logged to the stage's own MLflow run (tag stage=report). reports/runs.json, the runs read, is a cached DVC output
and not in git: a fresh clone rebuilds the report from its own runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow

from sightbeyond.config import Report
from sightbeyond.io import atomic_dir
from sightbeyond.layout import NONE, REPORTS
from sightbeyond.report import compare, figures, reliance, tables
from sightbeyond.report.reading import Results, latest
from sightbeyond.report.stats import Bootstrap
from sightbeyond.tracking.runs import flatten, stage_run

HEADLINE = tuple(m for c in tables.SPECS["table1"].columns for m in c.metrics)


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["empty"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()} for row in rows)


def _selection(cfg: Report, experiment: str) -> str:
    only = [what for what, chosen in ((f"git commit {cfg.git_commit}", cfg.git_commit),
                                      (f"DVC experiment {cfg.dvc_exp}", cfg.dvc_exp)) if chosen]
    return f"MLflow experiment `{experiment}`, the latest finished run of each cell" + (
        f", only {' and '.join(only)}" if only else "")


def _footnote(cfg: Report, experiment: str) -> str:
    return (f"Ours: {_selection(cfg, experiment)}; tuned rows: image instruction tuning on `{cfg.data}` data. "
            "(paper): as published. Values in the paper's units. Delta: against the base LLM (Tables 1, 3), against "
            f"clean COCO in percent (Table 5). [a, b]: the delta's {cfg.confidence:.0%} paired percentile bootstrap "
            f"interval over documents ({cfg.resamples} resamples, seed {cfg.seed}), or the value's own where there is "
            "no delta. * p<0.05, ** p<0.01, *** p<0.001: McNemar mid-p for right/wrong results, else the paired "
            "bootstrap. CI n/a: a run logged no per-document results. —: no run. † the checkpoint was chosen by "
            "stage2.best_metric on a held-out share of the documents, left out of these scores; ‡ chosen on the "
            "reported documents themselves, so its score is optimistic.")


def _headline(rows: list[dict]) -> dict:
    """{backbone: {tuning-modality-data: {metric: {value, delta, delta_ci_low, delta_ci_high, p_value}}}}"""
    out: dict = {}
    for r in rows:
        if r["delta"] is None:
            continue
        backbone, variant, data = r["cell"].split("/")
        fields = {k: round(r[k], 4) for k in ("value", "delta", "delta_ci_low", "delta_ci_high", "p_value")
                  if r[k] is not None}
        out.setdefault(backbone, {}).setdefault(f"{variant}-{data}", {})[r["metric"]] = fields
    return out


def write(cfg: Report, results: Results, experiment: str, out: Path) -> dict:
    """Every report file under `out`; returns the headline metrics (metrics.json)."""
    boot = Bootstrap(cfg.resamples, cfg.seed, cfg.confidence)
    tabular = out / "tables"
    tabular.mkdir(parents=True, exist_ok=True)
    values = []
    for spec in tables.SPECS.values():
        table = tables.build(spec, results, boot, cfg.data)
        (tabular / f"{spec.name}.md").write_text(tables.markdown(table, _footnote(cfg, experiment)))
        (tabular / f"{spec.name}.csv").write_text(tables.to_csv(table))
        values += tables.tidy(table, results)
    _write_csv(tabular / "values.csv", values)

    tuned = sorted((c for c in results.cells if c.stage == "eval_nlp" and c.tuning != NONE),
                   key=lambda c: (c.backbone, c.tuning, c.modality, c.data))
    nlp_metrics = compare.default_metrics("eval_nlp")
    ablation = compare.records(results, tuned, nlp_metrics, boot)
    _write_csv(tabular / "ablation.csv", ablation)
    (tabular / "ablation.md").write_text(f"### Every tuned LLM against its base LLM\n\n{_selection(cfg, experiment)}.\n\n"
                                     f"```\n{compare.render(ablation)}\n```\n")

    relied = reliance.rows(results, boot, cfg.data)
    _write_csv(tabular / "reliance.csv", relied)
    (tabular / "reliance.md").write_text(reliance.markdown(relied, _selection(cfg, experiment)))

    plots, pngs = out / "plots", out / "figures"
    _write_csv(plots / "modality.csv", figures.modality(results, boot, cfg.data, pngs / "fig2_modality.png"))
    _write_csv(plots / "data_types.csv", figures.data_types(results, boot, pngs / "fig3_data_types.png"))
    for label, curve in figures.stepwise(results, pngs / "fig4_stepwise.png").items():
        _write_csv(plots / "stepwise" / f"{label.replace('/', '_')}.csv", curve)
    _write_csv(plots / "correlation.csv", figures.correlation(results, cfg.data, pngs / "fig5_correlation.png"))
    for label, curve in reliance.figure(results, cfg.data, pngs / "fig6_reliance.png").items():
        _write_csv(plots / "reliance" / f"{label.replace('/', '_').replace(' ', '_')}.csv", curve)

    headline = _headline([r for r in ablation if r["metric"] in HEADLINE])
    (out / "metrics.json").write_text(json.dumps(headline, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(_readme(cfg, experiment, results))
    (out / "runs.json").write_text(json.dumps({c.label + f" ({c.stage})": sorted(set(r.run_of.values()))
                                               for c, r in sorted(results.cells.items(), key=lambda kv: (kv[0].stage, kv[0]))}, indent=2) + "\n")
    return headline


def _readme(cfg: Report, experiment: str, results: Results) -> str:
    cells = "\n".join(f"- `{c.stage}` {c.label}: runs {', '.join(sorted(set(r.run_of.values())))}"
                      for c, r in sorted(results.cells.items(), key=lambda kv: (kv[0].stage, kv[0].label)))
    left_out = "\n".join(f"- {why}" for why in results.left_out)
    return f"""# Report: the paper's tables and figures from this project's runs

Read from {_selection(cfg, experiment)}. A cell with no run is shown as missing ("—", "no run"), never filled in.
Intervals: {cfg.confidence:.0%} percentile bootstrap over documents ({cfg.resamples} resamples, seed {cfg.seed}),
paired (the same resampled documents for both models) for deltas; significance: McNemar's mid-p test for right/wrong
results, else the paired bootstrap.

- `tables/table1.md`/`.csv`: Table 1, Ethics and TruthfulQA (mc1, mc2, gen ROUGE-L acc.), each tuned LLM against
  its base LLM.
- `tables/table3.md`/`.csv`: Table 3, MMLU, GSM8K, MathQA, SQuAD v2 F1 and BoolQ, against the base LLM.
- `tables/table4.md`/`.csv`: Table 4, Unicorn, MME, COCO and Flickr30k CIDEr and POPE accuracy of the image-tuned
  models.
- `tables/table5.md`/`.csv`: Table 5, COCO CIDEr on clean and corrupted images, the drop in percent of clean.
- `tables/values.csv`: every value of those tables on one line each, with intervals, tests, the paper's numbers and
  run ids.
- `tables/ablation.md`/`.csv`: every tuned LLM (each tuning, modality and data) against its base LLM, all NLP metrics.
- `tables/reliance.md`/`.csv`: whether each image cell reads its image (the held-out loss with another record's
  image minus with the right one, after stage 1 and after stage 2, with intervals; POPE's yes/no AUC with the right
  and another image), beside its image − text-only differences; a cell whose gap does not exclude 0 says so.
- `figures/fig2_modality.png`: base, text-only-tuned and image-tuned LLMs on Ethics and TruthfulQA, with the
  image minus text-only difference and its significance above each pair, and the image cell's reliance gap.
- `figures/fig3_data_types.png`: image tuning on each type of instruction data (conversation, detail, reasoning,
  random subset) and on the full set, against the base LLM.
- `figures/fig4_stepwise.png`: Ethics and TruthfulQA-mc1 measured during stage 2, per training run.
- `figures/fig5_correlation.png`: each image-tuned model's multimodal score (MME perception, COCO CIDEr) against
  its LLM's NLP scores, with Pearson's r; the paper's models in grey with theirs.
- `figures/fig6_reliance.png`: the reliance gap against the training step, in stage 1 and in each image cell of
  stage 2.
- `plots/`: the figures' data; `metrics.json`: the headline deltas (Table 1's metrics) of every tuned LLM.

## Cells read

{cells or "none"}

## Runs left out

{left_out or "none"}
"""


def run(params) -> None:
    """`params`: the project's Params, with `report` (settings.Report) and `tracking.experiment`."""
    from sightbeyond.evaluation.nlp_stage import expected  # here: that stage module loads torch and transformers

    cfg = params.report
    with stage_run("report", params, name="report") as active:
        results = latest(params.tracking.experiment, git_commit=cfg.git_commit, dvc_exp=cfg.dvc_exp,
                         measured=expected(params))
        with atomic_dir(REPORTS) as tmp:  # no stale figure of a run no longer selected survives a rebuild
            headline = write(cfg, results, params.tracking.experiment, tmp)
        if active is not None:
            mlflow.log_params(flatten({"report": cfg.model_dump()}))
            mlflow.log_metrics(flatten(headline))
            mlflow.log_artifacts(str(REPORTS), "reports")
