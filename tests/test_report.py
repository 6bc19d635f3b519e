"""The report from MLflow runs logged here: the paper's own Table 1 numbers give back the paper's deltas; per-document
results give intervals and significance; missing cells stay missing; the report's files are all written."""

from __future__ import annotations

import json
import os
import re
import shutil

from pathlib import Path

import numpy as np
import pytest
import yaml

from sightbeyond.config import Params, load_params
from sightbeyond.tasks import mme
from sightbeyond.report import build, compare, tables
from sightbeyond.report.reading import Cell, CellRuns, Results, latest
from sightbeyond.report.stats import Bootstrap, mcnemar

from conftest import ROOT

EXPERIMENT = "report-test"
BOOT = Bootstrap(300)
FEW_RESAMPLES = load_params(ROOT / "params.yaml", overrides={"report.resamples": 200}).report
ETHICS = {"ethics_cm": "ethics_commonsense"} | {t: t for t in ("ethics_deontology", "ethics_justice",
                                                              "ethics_utilitarianism", "ethics_virtue")}


def lm_eval(right: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, list[dict]]]:
    """Metrics and lm-eval's per-sample records for right/wrong results per lm-eval task."""
    samples = {task: [{"doc_id": i, "filter": "none", "metrics": ["acc"], "acc": float(r)} for i, r in enumerate(rs)]
               for task, rs in right.items()}
    metrics = {"truthfulqa_mc1/acc": right["truthfulqa_mc1"].mean()}
    metrics |= {f"{prefix}/acc": right[task].mean() for task, prefix in ETHICS.items()}
    metrics["ethics/acc"] = np.mean([metrics[f"{p}/acc"] for p in ETHICS.values()])
    return metrics, samples


def empty_store(request, path: Path) -> None:
    """A new sqlite store runs every schema migration MLflow has, for seconds: one empty store per MLflow version is
    kept in pytest's cache (where there is one) and copied."""
    import mlflow

    cache = getattr(request.config, "cache", None)
    if cache is None:
        mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
        return
    template = cache.mkdir(f"mlflow-{mlflow.__version__}-empty-store") / "mlflow.db"
    if not template.exists():
        partial = template.with_name(f"{os.getpid()}.partial")
        mlflow.MlflowClient(f"sqlite:///{partial}").search_experiments()
        partial.replace(template)  # whole or absent, should another session read it meanwhile
    shutil.copy(template, path)


@pytest.fixture(scope="module")
def store(tmp_path_factory, request):
    """One sqlite store for the module: the paper's Table 1 as runs, a tiny backbone with per-document results, its
    multimodal and stage-2 runs, and runs of two commits."""
    yield from fill_store(tmp_path_factory.mktemp("mlflow") / "mlflow.db", request)


def fill_store(path: Path, request):
    import mlflow
    from mlflow.entities import Metric

    empty_store(request, path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}")
        mlflow.set_tracking_uri(f"sqlite:///{path}")
        client = mlflow.MlflowClient()
        experiment = client.create_experiment(EXPERIMENT)
        clock = iter(range(1_000_000, 2_000_000, 1000))

        def log(stage, backbone, tuning="none", modality="none", metrics=(), *, data="full", steps=(0,), commit="aaaa",
                status="FINISHED", family=None, dicts=(), texts=(), tables_=()):
            tags = {"stage": stage, "backbone": backbone, "tuning": tuning, "modality": modality, "data": data,
                    "git_commit": commit} | ({"family": family} if family else {})
            run = client.create_run(experiment, start_time=next(clock), tags=tags)
            client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), 0, step) for k, v in dict(metrics).items()
                                                       for step in steps])
            for artifact, obj in dicts:
                client.log_dict(run.info.run_id, obj, artifact)
            for artifact, text in texts:
                client.log_text(run.info.run_id, text, artifact)
            for artifact, table in tables_:
                client.log_table(run.info.run_id, table, artifact)
            client.set_terminated(run.info.run_id, status)
            return run.info.run_id

        spec = tables.SPECS["table1"]
        rows, paper = tables.read_paper(spec)
        for row in rows:
            values = {m: tables.paper_numbers(paper[row, c.header])[0][0] / 100
                      for c in spec.columns for m in c.metrics}
            log("eval_nlp", row.backbone, row.tuning, "none" if row.tuning == "none" else "image", values)

        rng = np.random.default_rng(0)
        base = {t: rng.random(60) < 0.5 for t in ["truthfulqa_mc1", *ETHICS]}
        tuned = {t: np.where(rng.random(60) < 0.6, True, r) for t, r in base.items()}  # right more often
        text = {t: np.where(rng.random(60) < 0.1, ~r, r) for t, r in base.items()}
        for tuning, modality, right, how in (("none", "none", base, "results"), ("ft", "image", tuned, "dict"),
                                             ("ft", "text", text, "jsonl")):
            metrics, samples = lm_eval(right)
            results = {"results": {}, "group_subtasks": {}} | ({"samples": samples} if how == "results" else {})
            dicts = [("lm_eval_results.json", results)] + [("lm_eval_samples.json", samples)] * (how == "dict")
            texts = [(f"predictions/{task}.jsonl", "\n".join(json.dumps(r) for r in records))  # nlp_stage's layout
                     for task, records in samples.items()] if how == "jsonl" else []
            log("eval_nlp", "tiny", tuning, modality, metrics, dicts=dicts, texts=texts)

        clean = rng.uniform(40, 80, 30)
        corrupted = clean * rng.uniform(0.7, 0.9, 30)
        images = [f"img{i}" for i in range(30)]
        labels = ["yes", "no"] * 25
        answers = [lab if i % 5 else "Maybe" for i, lab in enumerate(labels)]  # "Maybe" parses as yes
        pope_acc = np.mean([("yes" if a == "Maybe" else a) == lab for a, lab in zip(answers, labels)])
        log("eval_mm", "tiny", "ft", "image", {"pope_random/acc": pope_acc}, family="pope",
            tables_=[("pope_random_predictions.json",
                      {"question_id": list(range(50)), "image": [f"p{i // 5}.jpg" for i in range(50)],
                       "label": labels, "answer": answers})])
        log("eval_mm", "tiny", "ft", "image", {"coco/cider": clean.mean()}, family="coco",
            tables_=[("coco_predictions.json", {"image": images, "cider": list(clean)})])
        log("eval_mm", "tiny", "ft", "image", {"coco_c/cider": corrupted.mean()}, family="coco_c",
            tables_=[("coco_c_predictions.json", {"image": images * 2, "corruption": ["a"] * 30 + ["b"] * 30,
                                                  "cider": list(corrupted * 0.9) + list(corrupted * 1.1)})])
        mme_rows = [(task, f"{task}{i // 2}.jpg", f"q{i}", truth, answer) for task in ("existence", "code_reasoning")
                    for i, (truth, answer) in enumerate(zip(["Yes", "No"] * 3, ["Yes", "No", "No", "No", "yes", "Yes"]))]
        mme_scores = mme.mme_metrics({t: ["\t".join(r[1:]) for r in mme_rows if r[0] == t] for t in ("existence",
                                                                                                   "code_reasoning")})
        log("eval_mm", "tiny", "ft", "image", mme_scores, family="mme", tables_=[("mme_predictions.json", {
            "subtask": [r[0] for r in mme_rows], "image": [r[1] for r in mme_rows],
            "correct": [mme.parse_answer(r[4]) == r[3].lower() for r in mme_rows]})])
        ood_correct, sketch = [True, False, True, True], ["yes", "no", "unparsed", "yes"]
        log("eval_mm", "tiny", "ft", "image", {"unicorn_oodcv/acc": 0.75, "unicorn_sketch/acc": 2 / 3}, family="unicorn",
            tables_=[("unicorn_oodcv_predictions.json", {"image": list("abcd"), "correct": ood_correct}),
                     ("unicorn_sketch_predictions.json", {"image": list("abcd"), "question": ["q"] * 4,
                                                          "label": ["Yes", "No", "Yes", "No"], "parsed": sketch})])
        log("stage2", "tiny", "ft", "image", {"ethics/acc": 0.6, "truthfulqa_mc1/acc": 0.3}, steps=(0, 10, 20))
        log("eval_nlp", "tiny", "ft", "image", {"ethics/acc": 0.55, "truthfulqa_mc1/acc": 0.5}, data="detail")

        log("eval_nlp", "other", metrics={"ethics/acc": 0.40}, commit="aaaa")
        log("eval_nlp", "other", metrics={"ethics/acc": 0.45}, commit="bbbb")
        log("eval_nlp", "other", metrics={"ethics/acc": 0.99}, commit="bbbb", status="FAILED")
        yield {"base": base, "tuned": tuned, "clean": clean, "corrupted": corrupted}


def signed(text: str) -> float:
    return float(re.search(r"\(([+-]?[\d.]+)%\)", text)[1])


def test_table1_from_the_papers_numbers_gives_the_papers_deltas(store):
    table = tables.build(tables.SPECS["table1"], latest(EXPERIMENT), BOOT)
    header, *body = tables.grid(table)
    checked = 0
    for row, line in zip(table.rows, body):
        if row.backbone not in tables.NAMES:  # the rows only this test's runs have
            continue
        for column in table.spec.columns:
            ours, paper = line[header.index(column.header)], line[header.index(column.header) + 1]
            assert ours.split(" ")[0] == paper.split(" ")[0]           # the value, as the paper rounds it
            if row.tuning != "none":
                # the paper's deltas are of unrounded values: within one rounding step of ours
                assert abs(signed(ours) - signed(paper)) <= 0.1 + 1e-9, (row, column.header, ours, paper)
                assert ours.endswith("[CI n/a]")                      # these runs logged no per-document results
                checked += 1
            else:  # a base LLM is its own reference: a value, never "(no <backbone>/base base)"
                assert "(no " not in ours, (row, column.header, ours)
    assert checked == 12 * 4


def test_per_document_results_give_intervals_and_significance(store):
    results = latest(EXPERIMENT)
    base, tuned = Cell.base("tiny"), Cell("tiny", "ft", "image", "full")
    for cell, right in ((base, store["base"]), (tuned, store["tuned"])):
        docs = results.docs(cell, "truthfulqa_mc1/acc")
        assert np.array_equal(docs.values, right["truthfulqa_mc1"].astype(float))
        assert results.docs(cell, "ethics/acc").score() == pytest.approx(results.value(cell, "ethics/acc"))
    text = Cell("tiny", "ft", "text", "full")
    assert results.docs(text, "ethics/acc") is not None                  # JSON-lines samples
    c = results.compare(base, tuned, "truthfulqa_mc1/acc", BOOT)
    assert c.test == "mcnemar"
    assert c.p == pytest.approx(mcnemar(store["base"]["truthfulqa_mc1"], store["tuned"]["truthfulqa_mc1"]))
    table = tables.build(tables.SPECS["table1"], results, BOOT)
    row = next(r for r in table.rows if r.backbone == "tiny" and r.tuning == "ft")
    cell = tables.format_entry(table.entries[row, "ethics/acc"], percent=True)
    assert re.fullmatch(r"\d+\.\d% \(\+\d+\.\d%\)\*+ \[\+\d+\.\d, \+\d+\.\d\]", cell), cell
    assert tables.format_entry(table.entries[row, "truthfulqa_mc2/acc"], percent=True) == tables.MISSING


def test_table5_relative_drop_paired_by_image(store):
    table = tables.build(tables.SPECS["table5"], latest(EXPERIMENT), BOOT)
    row = next(r for r in table.rows if r.backbone == "tiny")
    entry = table.entries[row, "coco_c/cider"]
    clean, corrupted = store["clean"].mean(), store["corrupted"].mean()
    assert entry.delta == pytest.approx(100 * (corrupted - clean) / clean)
    assert entry.comparison.low < entry.delta < entry.comparison.high < 0
    assert table.entries[row, "coco/cider"].estimate.low < clean < table.entries[row, "coco/cider"].estimate.high


def test_multimodal_readers_reproduce_the_logged_metrics(store):
    results = latest(EXPERIMENT)
    cell = Cell("tiny", "ft", "image", "full", stage="eval_mm")
    for metric in ("mme/perception", "mme/cognition", "unicorn_oodcv/acc", "unicorn_sketch/acc", "pope_random/acc",
                   "coco/cider", "coco_c/cider"):
        docs = results.docs(cell, metric)  # None unless they give back the run's logged value
        assert docs is not None and docs.score() == pytest.approx(results.value(cell, metric)), metric
    assert len(results.docs(cell, "mme/perception").keys) == 3                 # images, two questions each
    assert len(results.docs(cell, "unicorn_sketch/acc").keys) == 3             # the parsed answers only
    assert len(results.docs(cell, "pope_random/acc").keys) == 10               # images, resampled with their questions


def test_latest_finished_run_and_selection_by_commit(store):
    other = Cell.base("other")
    assert latest(EXPERIMENT).value(other, "ethics/acc") == 0.45             # the newer; the FAILED one is skipped
    assert latest(EXPERIMENT, git_commit="aaaa").value(other, "ethics/acc") == 0.40
    assert latest("no-such-experiment").cells == {}


def test_missing_cells_stay_missing():
    nothing = tables.build(tables.SPECS["table1"], Results({}), BOOT)
    assert all(line[1::2] == [tables.MISSING] * 4 for line in tables.grid(nothing)[1:])
    tuned = Cell("llama2", "ft", "image", "full")
    only_tuned = Results({tuned: CellRuns(tuned, {"ethics/acc": 0.6})})
    table = tables.build(tables.SPECS["table1"], only_tuned, BOOT)
    lines = {(r.backbone, r.tuning): line for r, line in zip(table.rows, tables.grid(table)[1:])}
    assert lines["llama2", "none"][1] == tables.MISSING
    assert lines["llama2", "ft"][1] == "60.0% (no llama2/base)"            # no delta against anything else
    assert lines["llama2", "lora"][1] == tables.MISSING
    assert lines["llama2", "ft"][2] == "65.4% (+19.6%)"                     # the paper's, beside


def test_report_files(store, tmp_path):
    out = tmp_path / "reports"
    headline = build.write(FEW_RESAMPLES, latest(EXPERIMENT), EXPERIMENT, out)
    for name in ("table1", "table3", "table4", "table5"):
        assert (out / "tables" / f"{name}.md").read_text().startswith("### Table")
        assert (out / "tables" / f"{name}.csv").stat().st_size > 0
    for png in ("fig2_modality", "fig3_data_types", "fig4_stepwise", "fig5_correlation"):
        data = (out / "figures" / f"{png}.png").read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    assert json.loads((out / "metrics.json").read_text()) == headline
    assert headline["tiny"]["ft-image-full"]["ethics/acc"]["p_value"] < 0.05
    assert "llama2" in headline and "delta_ci_low" not in headline["llama2"]["ft-image-full"]["ethics/acc"]
    assert (out / "plots" / "stepwise" / "tiny_ft-image_full.csv").read_text().splitlines()[0] == \
        "step,ethics_acc,truthfulqa_mc1_acc"
    assert "tiny/ft-text/full" in (out / "tables" / "ablation.md").read_text()


def test_the_report_from_another_store_of_the_same_runs_differs_only_in_run_ids(store, tmp_path, request):
    """What a fresh clone's own runs give: the committed report's files, but for the run ids they name."""
    first = tmp_path / "first"
    build.write(FEW_RESAMPLES, latest(EXPERIMENT), EXPERIMENT, first)
    again = fill_store(tmp_path / "again.db", request)
    next(again)  # the same runs, logged anew into another store: other run ids
    second = tmp_path / "second"
    build.write(FEW_RESAMPLES, latest(EXPERIMENT), EXPERIMENT, second)
    run_id = re.compile(rb"\b[0-9a-f]{32}\b")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file()) and len(files) > 20
    assert run_id.search((first / "README.md").read_bytes()) and run_id.search((first / "runs.json").read_bytes())
    assert (first / "README.md").read_bytes() != (second / "README.md").read_bytes()  # other ids indeed
    for f in files:
        assert run_id.sub(b"<run>", (first / f).read_bytes()) == run_id.sub(b"<run>", (second / f).read_bytes()), f
    next(again, None)


def test_compare_table(store):
    import mlflow

    results = latest(EXPERIMENT)
    run_id = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string="tags.backbone = 'other'",
                                output_format="list")[-1].info.run_id  # the oldest: commit aaaa
    pinned = results.pin(run_id)
    rows = compare.records(results, [pinned], ["ethics/acc"], BOOT, against=Cell.base("other"))
    assert rows[0]["value"] == pytest.approx(40.0) and rows[0]["delta"] == pytest.approx(-5.0)
    text = compare.render(compare.records(results, [Cell("tiny", "ft", "image", "full")],
                                          ["ethics/acc", "truthfulqa_mc2/acc"], BOOT))
    assert "tiny/base" in text and "mcnemar" in text and "truthfulqa_mc2" not in text


@pytest.mark.skipif("report" not in Params.model_fields, reason="params.yaml has no report section yet")
def test_run_logs_the_report(store, tmp_path, monkeypatch):
    import mlflow

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("SIGHTBEYOND_ROOT", str(root))
    monkeypatch.chdir(tmp_path)
    params = load_params(root / "params.yaml", overrides={"tracking.experiment": EXPERIMENT, "report.resamples": 100})
    build.run(params)
    assert (tmp_path / "reports" / "tables" / "table1.md").is_file()
    (report,) = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string="tags.stage = 'report'",
                                   output_format="list")
    assert report.data.metrics["tiny.ft-image-full.ethics/acc.delta"] > 0


def test_runs_measured_differently_are_not_paired():
    """Same document keys are not the same measurement: another data file, limit, dtype or BOS is never a delta."""
    base, tuned = Cell.base("b"), Cell("b", "ft", "image", "full")
    measured = {"eval_source": "local", "eval_data": "ce097a26", "eval_limit": "None", "eval_dtype": "float32",
                "add_bos_token": "True"}
    for change in ({"eval_dtype": "bfloat16"}, {"eval_data": "0123abcd"}, {"eval_limit": "50"}):
        results = Results({base: CellRuns(base, {"ethics/acc": 0.5}, {"ethics/acc": "r1"}, {"r1": measured}),
                           tuned: CellRuns(tuned, {"ethics/acc": 0.6}, {"ethics/acc": "r2"}, {"r2": measured | change})})
        key, value = next(iter(change.items()))
        with pytest.warns(UserWarning, match=f"{key} {measured[key]} vs {value}"):
            assert results.compare(base, tuned, "ethics/acc", BOOT) is None


def test_an_ad_hoc_evaluation_changes_neither_the_tracked_results_nor_the_report(tiny_project, monkeypatch, mlflow_store):
    """`-S eval_nlp.limit=1` is not the pipeline's measurement: its summary goes to results/adhoc/, and the report,
    which reads the runs params.yaml describes, leaves it out and says so."""
    from sightbeyond.cli import main

    root = tiny_project()
    monkeypatch.setenv("SIGHTBEYOND_ROOT", str(root))
    assert main(["eval_nlp", "--model", "base"]) == 0
    tracked = root / "results/eval_nlp/tiny-base.json"
    before = tracked.read_text()
    assert main(["-S", "eval_nlp.limit=1", "eval_nlp", "--model", "base"]) == 0
    assert tracked.read_text() == before
    # ad-hoc results are named by their settings: another ad-hoc run keeps the first one's file
    limit_1 = list((root / "results/adhoc/eval_nlp").glob("tiny-base-*.json"))
    assert len(limit_1) == 1
    assert main(["-S", "eval_nlp.limit=2", "eval_nlp", "--model", "base"]) == 0
    assert len(list((root / "results/adhoc/eval_nlp").glob("tiny-base-*.json"))) == 2 and limit_1[0].is_file()
    assert len(list((root / "predictions/adhoc/eval_nlp").glob("tiny-base-*"))) == 2
    # a backbone given as a directory: ad hoc, left out, named without the path of this machine
    llm = Path(yaml.safe_load((root / "params.yaml").read_text())["backbones"]["tiny"]["llm"])
    assert main(["-S", f"backbone={llm}", "eval_nlp", "--model", "base"]) == 0
    assert main(["report"]) == 0
    import mlflow

    pipeline, ad_hoc, _, directory = mlflow.search_runs(
        experiment_names=["sight-beyond-text"], filter_string="tags.stage = 'eval_nlp'",
        order_by=["attributes.start_time ASC"], output_format="list")
    assert ad_hoc.data.tags["ad_hoc"] == "true" and "ad_hoc" not in pipeline.data.tags
    read, left_out = (root / "reports/README.md").read_text().split("## Runs left out")
    assert pipeline.info.run_id in read and ad_hoc.info.run_id not in read and directory.info.run_id not in read
    assert f"`tiny/base` run {ad_hoc.info.run_id}: measured otherwise" in left_out and "eval_limit 1 not None" in left_out
    assert f"`llm (a local directory)/base` run {directory.info.run_id}: ad hoc" in left_out
    assert str(llm.parent) not in (root / "reports/README.md").read_text()


def test_entries_say_why_they_have_no_delta_and_keep_a_small_gap_readable():
    from sightbeyond.report.stats import Estimate

    row, cell = tables.Row("MM-tiny-ft", "tiny", "ft"), Cell("tiny", "ft", "image", "full", stage="eval_mm")
    zero_clean = tables.Entry(row, "coco_c/cider", cell, 0.0, None, "", "%", against="tiny/ft-image/full coco/cider",
                              no_delta="coco/cider is 0: no relative change")
    assert tables.format_entry(zero_clean, percent=False) == "0.0 (coco/cider is 0: no relative change)"
    gap = tables.Entry(row, "reliance/gap", cell, 0.077, Estimate(0.077, 0.063, 0.092, 100), "", "")
    assert tables.format_entry(gap, percent=False) == "0.077 [0.063, 0.092]"
    assert tables.scale("reliance/gap") == 1.0 and tables.scale("pope_random/acc") == 100.0
