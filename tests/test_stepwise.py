"""The step-wise evaluator gives HFLM's per-document results, follows the weights, and keeps the best step's model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from lm_eval.models.huggingface import HFLM
from transformers import AutoModelForCausalLM, AutoTokenizer

from sightbeyond.config import ConfigError, load_params
from sightbeyond.embedded.nlp_fixtures import write_nlp_fixtures
from sightbeyond.tasks.nlp import evaluate_loaded, fixed_subsample, load_tasks
from sightbeyond.tasks.stepwise_eval import StepwiseEvaluator
from sightbeyond.layout import BEST
from sightbeyond.training.stepwise import StepwiseEvalCallback

from conftest import ROOT

DEFAULT = load_params(ROOT / "params.yaml").stage2.stepwise_tasks
# every loglikelihood benchmark: shared primers (TruthfulQA), one-token choices (ETHICS, BoolQ), a group of five-shot
# subjects (MMLU), seeded four-shot prompts (MathQA)
LOGLIKELIHOOD = [*DEFAULT, "truthfulqa_mc2", "mmlu", "mathqa", "boolq"]


@pytest.fixture(autouse=True)
def one_thread():
    # These models are tiny: on a shared machine more threads mostly wait for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model_and_tokenizer(tiny_backbone):
    return (AutoModelForCausalLM.from_pretrained(tiny_backbone / "llm").eval(),
            AutoTokenizer.from_pretrained(tiny_backbone / "llm"))


def assert_same_documents(fast, reference) -> None:
    assert fast.docs.keys() == reference.samples.keys()
    for task, docs in fast.docs.items():
        assert [d.doc_id for d in docs] == [s["doc_id"] for s in reference.samples[task]]
        for doc, sample in zip(docs, reference.samples[task]):
            lls = [r[0][0] for r in sample["resps"]]
            assert doc.loglikelihoods == pytest.approx(lls, rel=1e-5, abs=1e-4), (task, doc.doc_id)  # fp32 sums
            assert doc.is_greedy == [r[0][1] for r in sample["resps"]]
            assert max(range(len(lls)), key=lls.__getitem__) == max(range(len(lls)), key=doc.loglikelihoods.__getitem__)
            assert doc.values == pytest.approx({m: sample[m] for m in doc.values}, abs=1e-4)


def test_same_per_document_results_as_hflm_as_the_weights_change(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    write_nlp_fixtures(tmp_path, seed=1, n_truthfulqa=6, n_ethics=10, n_other=4)
    tasks = load_tasks(LOGLIKELIHOOD, "fixture", tmp_path)
    samples = fixed_subsample(tasks, 7)
    evaluator = StepwiseEvaluator(model, tokenizer, tasks, samples=samples, batch_size=4)
    hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    for _ in range(2):  # the second pass sees changed weights through the same prepared requests
        fast, reference = evaluator.run(), evaluate_loaded(hflm, tasks, samples=samples, log_samples=True)
        assert_same_documents(fast, reference)
        assert fast.metrics == pytest.approx(reference.metrics, abs=1e-6)
        assert {"truthfulqa_mc1/acc", "ethics/acc", "mmlu/acc", "mathqa/acc"} <= fast.metrics.keys()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))


def test_lora_unmerged(model_and_tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = model_and_tokenizer
    write_nlp_fixtures(tmp_path, n_truthfulqa=4, n_ethics=6)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():  # LoRA starts as a no-op: give the adapters weight
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    base = peft.get_base_model().eval()  # what the step-wise callback evaluates
    tasks = load_tasks(["truthfulqa_mc1", "ethics_deontology"], "fixture", tmp_path)
    fast = StepwiseEvaluator(base, tokenizer, tasks, batch_size=4).run()
    assert_same_documents(fast, evaluate_loaded(HFLM(pretrained=base, tokenizer=tokenizer, batch_size=4), tasks,
                                                log_samples=True))
    with peft.disable_adapter():
        plain = StepwiseEvaluator(base, tokenizer, tasks, batch_size=4).run()
    assert any(a.loglikelihoods != b.loglikelihoods for a, b in zip(fast.docs["ethics_deontology"], plain.docs["ethics_deontology"]))


def test_all_documents_and_truncated_prompts(model_and_tokenizer, tmp_path):
    # MMLU's five shots overflow the model's 256 positions: both truncate the same requests from the left
    model, tokenizer = model_and_tokenizer
    write_nlp_fixtures(tmp_path, seed=2, n_truthfulqa=3, n_ethics=5)
    tasks = load_tasks(["mmlu", "ethics_utilitarianism"], "fixture", tmp_path)
    fast = StepwiseEvaluator(model, tokenizer, tasks, batch_size=3).run()
    assert_same_documents(fast, evaluate_loaded(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=3), tasks,
                                                log_samples=True))
    assert len(fast.docs["ethics_utilitarianism"]) == 5


def test_fixed_subsample_is_seeded_and_spread(tmp_path):
    write_nlp_fixtures(tmp_path, n_truthfulqa=20, n_ethics=30)
    tasks = load_tasks(DEFAULT, "fixture", tmp_path)
    first, again = fixed_subsample(tasks, 8), fixed_subsample(tasks, 8)
    assert first == again and set(first) == set(DEFAULT)
    assert all(len(ids) == 8 and ids == sorted(ids) for ids in first.values()) and first["ethics_cm"] != list(range(8))
    assert fixed_subsample(tasks, None) is None and len(fixed_subsample(tasks, 100)["ethics_cm"]) == 30


def test_generation_tasks_are_refused(model_and_tokenizer, tmp_path):
    write_nlp_fixtures(tmp_path, n_truthfulqa=3, n_ethics=3, n_other=2)
    with pytest.raises(ValueError, match="gsm8k is generate_until"):
        StepwiseEvaluator(*model_and_tokenizer, load_tasks(["gsm8k"], "fixture", tmp_path))


def _state(step: int, max_steps: int = 10):
    return SimpleNamespace(global_step=step, max_steps=max_steps, is_world_process_zero=True)


def test_callback_logs_each_step_and_keeps_the_best_model(model_and_tokenizer, tmp_path, mlflow_store, monkeypatch):
    import mlflow

    model, tokenizer = model_and_tokenizer
    write_nlp_fixtures(tmp_path / "nlp", n_truthfulqa=4, n_ethics=4)
    args = SimpleNamespace(output_dir=str(tmp_path / "trainer"), bf16=False)
    values = iter([0.5, 0.75, 0.25, 0.75, 1.0])  # the metric at steps 0, 2, 4, 6, 8
    kept: list[str] = []
    run_evaluator = StepwiseEvaluator.run
    monkeypatch.setattr(StepwiseEvaluator, "run", lambda self: SimpleNamespace(
        metrics=run_evaluator(self).metrics | {"truthfulqa_mc1/acc": next(values)}))
    monkeypatch.setattr(StepwiseEvalCallback, "_keep", staticmethod(lambda out, model, processing, selection: kept.append(out.name)))
    mlflow.set_tracking_uri(f"sqlite:///{mlflow_store}")
    with mlflow.start_run() as run:
        callback = StepwiseEvalCallback(tokenizer, DEFAULT, tmp_path / "nlp", every=2, limit=3, batch_size=4,
                                best_metric="truthfulqa_mc1/acc")
        callback.on_train_begin(args, _state(0), None, model=model.train(), processing_class=tokenizer)
        for step in range(1, 9):
            callback.on_step_end(args, _state(step), None, model=model, processing_class=tokenizer)
        history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "truthfulqa_mc1/acc")
        assert sorted((m.step, m.value) for m in history) == [(0, 0.5), (2, 0.75), (4, 0.25), (6, 0.75), (8, 1.0)]
        assert "ethics/acc" in mlflow.get_run(run.info.run_id).data.metrics and model.training
        tags = mlflow.get_run(run.info.run_id).data.tags
        assert (tags["best_step"], float(tags["best_value"])) == ("8", 1.0) and kept == [BEST] * 3
        assert tags["selected_on"] == "reported documents"  # no holdout: the report marks the row as optimistic

        # a resumed run: the steps it holds are not logged again, and the best so far is the one it was tagged with
        resumed = StepwiseEvalCallback(tokenizer, DEFAULT, tmp_path / "nlp", every=2, limit=3, batch_size=4, logged_through=8,
                               best_metric="truthfulqa_mc1/acc")
        resumed.on_train_begin(args, _state(8), None, model=model, processing_class=tokenizer)
        assert resumed.best_value == 1.0 and resumed.last_step is None


def test_best_model_is_saved(model_and_tokenizer, tmp_path, mlflow_store):
    import mlflow

    model, tokenizer = model_and_tokenizer
    write_nlp_fixtures(tmp_path / "nlp", n_truthfulqa=3, n_ethics=3)
    mlflow.set_tracking_uri(f"sqlite:///{mlflow_store}")
    (tmp_path / "output").mkdir()
    with mlflow.start_run() as run:
        callback = StepwiseEvalCallback(tokenizer, DEFAULT, tmp_path / "nlp", every=5, limit=None, batch_size=4,
                                best_metric="ethics/acc")
        callback.on_train_begin(SimpleNamespace(output_dir=str(tmp_path / "trainer"), bf16=False), _state(0), None, model=model,
                                processing_class=tokenizer)
    assert (tmp_path / "trainer" / BEST / "tokenizer.json").exists()
    assert mlflow.get_run(run.info.run_id).data.tags["best_step"] == "0"
    callback.move_best(tmp_path / "output")  # the Trainer's directory goes at the end of stage 2
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "output" / BEST)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values()))
    assert not (tmp_path / "trainer" / BEST).exists()


def test_best_metric_must_be_a_stepwise_metric(tmp_path, model_and_tokenizer):
    write_nlp_fixtures(tmp_path, n_truthfulqa=3, n_ethics=3)
    with pytest.raises(ConfigError, match="mmlu/acc"):
        StepwiseEvalCallback(model_and_tokenizer[1], DEFAULT, tmp_path, every=5, limit=None, batch_size=4, best_metric="mmlu/acc")


def test_from_params(params_for, tmp_path, model_and_tokenizer):
    write_nlp_fixtures(tmp_path, n_truthfulqa=3, n_ethics=3)
    params = params_for(**{"eval_nlp.source": "local", "eval_nlp.local_root": str(tmp_path), "eval_nlp.batch_size": 4,
                           "stage2.stepwise_tasks": ["ethics_cm", "truthfulqa_mc1"], "presets.tiny.stage2.stepwise_limit": 2,
                           "stage2.best_metric": "truthfulqa_mc1/acc"})
    callback = StepwiseEvalCallback.from_params(params, model_and_tokenizer[1])
    assert set(callback.tasks["tasks"]) == {"ethics_cm", "truthfulqa_mc1"}
    assert all(len(ids) == 2 for ids in callback.samples.values())
    assert (callback.every, callback.batch_size, callback.logged_through, callback.best_metric) == \
        (params.hparams.stage2.eval_steps, 4, -1, "truthfulqa_mc1/acc")


def test_shared_prefix_lm_gives_hflms_samples(model_and_tokenizer, tmp_path):
    """eval_nlp's lm-eval model: every task through lm-eval's own evaluation, the same per-document results as HFLM."""
    from sightbeyond.tasks.stepwise_eval import SharedPrefixLM

    model, tokenizer = model_and_tokenizer
    write_nlp_fixtures(tmp_path, seed=3, n_truthfulqa=5, n_ethics=6, n_other=3)
    tasks = load_tasks(LOGLIKELIHOOD, "fixture", tmp_path)
    ours = evaluate_loaded(SharedPrefixLM(pretrained=model, tokenizer=tokenizer, batch_size=4), tasks, log_samples=True)
    reference = evaluate_loaded(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4), tasks, log_samples=True)
    assert ours.samples.keys() == reference.samples.keys()
    for task, samples in reference.samples.items():
        for mine, theirs in zip(ours.samples[task], samples, strict=True):
            assert mine["doc_id"] == theirs["doc_id"]
            assert [r[0][0] for r in mine["resps"]] == pytest.approx([r[0][0] for r in theirs["resps"]], rel=1e-5, abs=1e-4)
            assert [r[0][1] for r in mine["resps"]] == [r[0][1] for r in theirs["resps"]], (task, mine["doc_id"])
    assert ours.metrics == pytest.approx(reference.metrics, abs=1e-6)


def test_contexts_and_prefixes_are_computed_once(model_and_tokenizer, tmp_path):
    """TruthfulQA mc1 and mc2 ask the same questions after the same 6-shot primer: one row per question, holding
    every answer of both as branches, after one shared prefix."""
    from sightbeyond.tasks.stepwise_eval import MIN_SHARED_PREFIX

    model, tokenizer = model_and_tokenizer
    model.config.max_position_embeddings = 2048  # RoPE has no table: room for the primer without truncation
    write_nlp_fixtures(tmp_path, n_truthfulqa=6, n_ethics=3)
    tasks = load_tasks(["truthfulqa_mc1", "truthfulqa_mc2"], "fixture", tmp_path)
    scorer = StepwiseEvaluator(model, tokenizer, tasks, batch_size=4).scorer
    [cluster] = scorer.clusters
    assert cluster.prefix.shape[1] > 100 and MIN_SHARED_PREFIX < 100  # the primer
    docs = tasks["tasks"]["truthfulqa_mc1"].eval_docs
    assert sum(chunk.input_ids.shape[0] for chunk in cluster.chunks) == len({d["question"] for d in docs}) > 1
    assert scorer.n_requests == sum(len(d["mc1_targets"]["choices"]) + len(d["mc2_targets"]["choices"]) for d in docs)


def test_a_held_out_share_chooses_the_step_and_no_reported_score_reads_it(model_and_tokenizer, tmp_path, mlflow_store,
                                                                          params_for):
    """stage2.selection_holdout: the best step is chosen on a seeded share of the documents (`selection/<metric>`),
    which the step-wise curves and eval_nlp (base and tuned alike) leave out."""
    import mlflow

    from sightbeyond.evaluation.nlp_stage import reported_documents

    model, tokenizer = model_and_tokenizer
    write_nlp_fixtures(tmp_path / "nlp", n_truthfulqa=8, n_ethics=8)
    params = params_for(**{"eval_nlp.source": "local", "eval_nlp.local_root": str(tmp_path / "nlp"),
                           "eval_nlp.tasks": ["truthfulqa_mc1", "truthfulqa_mc2", "ethics_cm"],
                           "stage2.stepwise_tasks": ["truthfulqa_mc1", "ethics_cm"],
                           "stage2.best_metric": "truthfulqa_mc1/acc",
                           "stage2.selection_holdout": 0.25})
    callback = StepwiseEvalCallback.from_params(params, tokenizer)
    args = SimpleNamespace(output_dir=str(tmp_path / "trainer"), bf16=False)
    mlflow.set_tracking_uri(f"sqlite:///{mlflow_store}")
    with mlflow.start_run() as run:
        callback.on_train_begin(args, _state(0), None, model=model.train(), processing_class=tokenizer)
    logged = mlflow.get_run(run.info.run_id).data
    assert {"truthfulqa_mc1/acc", "selection/truthfulqa_mc1/acc"} <= logged.metrics.keys()
    assert logged.tags["selected_on"] == "holdout"
    assert json.loads((tmp_path / "trainer" / BEST / "selection.json").read_text())["selected_on"] == "holdout"
    reported = reported_documents(params, tmp_path / "nlp")
    for task in ("truthfulqa_mc1", "ethics_cm"):
        held = set(callback.held[task])
        assert held and not held & set(reported[task]) and len(held) + len(reported[task]) == 8
        assert set(callback.samples[task]) == set(range(8))  # both shares are scored, then told apart
    assert reported["truthfulqa_mc2"] == reported["truthfulqa_mc1"]  # the same questions, the same share held out



def test_documents_that_open_alike_share_their_tokens(model_and_tokenizer, tmp_path):
    """ETHICS deontology puts four excuses under one scenario: documents share rows, with HFLM's results."""
    model, tokenizer = model_and_tokenizer
    write_nlp_fixtures(tmp_path, n_truthfulqa=3, n_ethics=12)
    tasks = load_tasks(["ethics_deontology"], "fixture", tmp_path)
    evaluator = StepwiseEvaluator(model, tokenizer, tasks, batch_size=4)
    assert_same_documents(evaluator.run(), evaluate_loaded(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4),
                                                           tasks, log_samples=True))
    rows = sum(chunk.input_ids.shape[0] for cluster in evaluator.scorer.clusters for chunk in cluster.chunks)
    assert rows < 12


def test_a_row_holds_each_shared_token_once_and_scores_as_separate_rows(model_and_tokenizer):
    """Four contexts: a common opening longer than a row (the cluster's cached prefix), two scenarios of ten tokens,
    two excuses each; continuations of one and two tokens. Each scenario's row holds it once, and every request
    scores as its own full forward pass does."""
    from sightbeyond.tasks.stepwise_eval import MAX_ROW_TOKENS, SharedPrefixScorer

    model, _ = model_and_tokenizer
    opening = [10 + i % 10 for i in range(MAX_ROW_TOKENS)]
    scenarios, excuses = [list(range(30, 40)), list(range(50, 60))], [[70, 71], [72], [73, 74, 75], [76]]
    contexts = [opening + scenarios[i // 2] + excuses[i] for i in range(4)]
    continuations = [[5], [6, 7]]
    requests = [(tuple((context + continuation)[:-1]), continuation) for context in contexts for continuation in continuations]
    scorer = SharedPrefixScorer(requests, batch_size=2)
    [cluster] = scorer.clusters
    assert cluster.prefix.tolist() == [opening]
    [chunk] = cluster.chunks
    # per row: the scenario once, its two excuses, and after each the two-token continuation's first token; the
    # shorter row padded (0)
    assert sorted(map(sorted, chunk.input_ids.tolist())) == [sorted([0, *scenarios[0], 70, 71, 72, 6, 6]),
                                                             sorted([*scenarios[1], 73, 74, 75, 76, 6, 6])]
    scores = scorer.score(model)
    with torch.no_grad():
        for r, (inp, continuation) in enumerate(requests):
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([inp])).logits[0, -len(continuation):], dim=-1)
            expected = logprobs.gather(-1, torch.tensor(continuation)[:, None]).sum().item()
            greedy = bool((logprobs.argmax(-1) == torch.tensor(continuation)).all())
            assert scores[r][0] == pytest.approx(expected, abs=1e-4) and scores[r][1] == greedy


def test_a_shared_opening_that_fits_in_a_row_is_shared_there_with_no_cache_of_its_own(model_and_tokenizer):
    """ETHICS virtue asks five traits of one scenario: a short run of contexts goes into one row as a tree, not into a
    cluster whose cached prefix costs a forward pass of its own, and every request still scores as its full pass does."""
    from sightbeyond.tasks.stepwise_eval import SharedPrefixScorer

    model, _ = model_and_tokenizer
    scenarios = [list(range(30, 50)), list(range(50, 70))]
    contexts = [scenario + [80 + trait, 90] for scenario in scenarios for trait in range(5)]
    requests = [(tuple(context), [word]) for context in contexts for word in (5, 6)]
    scorer = SharedPrefixScorer(requests, batch_size=16)
    assert [cluster.prefix for cluster in scorer.clusters] == [None]
    [chunk] = scorer.clusters[0].chunks
    assert chunk.input_ids.shape == (2, 20 + 5 * 2)  # per scenario one row: the scenario once, each trait's two tokens
    assert scorer.n_forwards(0, 1) == 1
    scores = scorer.score(model)
    with torch.no_grad():
        for r, (inp, [word]) in enumerate(requests):
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([inp])).logits[0, -1], dim=-1)
            assert scores[r][0] == pytest.approx(logprobs[word].item(), abs=1e-4)
            assert scores[r][1] == (logprobs.argmax().item() == word)
