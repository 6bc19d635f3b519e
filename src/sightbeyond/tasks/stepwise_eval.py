"""lm-eval's loglikelihood requests scored exactly as `HFLM` scores them, with the work their prompts share done once.

HFLM runs every (context, continuation) request as its own row (one row per context where every continuation is one
token). Here the requests, tokenised and truncated by HFLM's own rules, are planned as a tree of what they share:
- a row is a token tree laid out depth first, each position attending to its ancestors only (a 4-D attention mask and
  explicit positions): the choices of one document (TruthfulQA's answers, ETHICS's " no" / " yes"; TruthfulQA mc1 and
  mc2 ask the same questions) branch from their context, computed once instead of once per choice, and neighbouring
  contexts that open with the same run of tokens (ETHICS deontology's four excuses of one scenario) share it;
- contexts that open with the same long run of tokens (TruthfulQA's 6-shot primer, MMLU's five shots of a subject,
  a task's instruction) form a cluster: that prefix goes through the model once, and its key/value cache serves
  every row of the cluster;
- the vocabulary projection and softmax are computed only where a continuation token is scored.
The plan is made once; `score` then only runs the model, so step-wise evaluation during training pays for the
tokenising once (`StepwiseEvaluator`), and `eval_nlp` uses it through lm-eval's own evaluation (`SharedPrefixLM`).
Each document's (log-likelihood, is-greedy) pairs go through the task's own `process_results` and aggregation, and
groups (MMLU) through lm-eval's group aggregation, so the metrics are lm-eval's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from sightbeyond.tasks.nlp import metrics_from_results, quiet, reseed_fewshot

_LOGLIKELIHOOD_TYPES = ("multiple_choice", "loglikelihood")
MIN_SHARED_PREFIX = 8  # tokens: a shorter run shared by several contexts is not worth a cache or a row of its own
MAX_ROW_TOKENS = 128   # a row of several contexts stops growing here: rows are padded to the longest of their batch


@dataclass
class DocResult:
    doc_id: int                          # the document's index in the task's evaluation split
    loglikelihoods: list[float]          # per request (choice), in lm-eval's order
    is_greedy: list[bool]
    values: dict[str, Any]               # the task's process_results


@dataclass
class StepwiseResult:
    metrics: dict[str, float]            # our names (sightbeyond.tasks.nlp)
    docs: dict[str, list[DocResult]] = field(repr=False)   # per lm-eval task


@dataclass
class _Chunk:
    """Rows (a context and its branches) after a shared prefix, right-padded; one forward pass."""

    input_ids: torch.Tensor              # (rows, length)
    position_ids: torch.Tensor           # (rows, length): after the prefix, a token's depth in its row's tree
    ends: torch.Tensor                   # (rows, length): where each token's subtree ends (depth-first layout)
    scored: torch.Tensor                 # (rows, length) bool: positions whose next-token distribution is read
    token_index: torch.Tensor            # (scored tokens,): each continuation token's index among the scored positions
    tokens: torch.Tensor                 # (scored tokens,): the continuation token
    request: torch.Tensor                # (scored tokens,): the request it belongs to (chunk-local)
    requests: list[int]                  # chunk-local request -> request


@dataclass
class _Cluster:
    prefix: torch.Tensor | None          # (1, prefix length): computed once, its cache shared by every chunk
    chunks: list[_Chunk]


class SharedPrefixScorer:
    """The plan for scoring `requests`, each (input tokens, continuation tokens) as HFLM feeds a causal LM: the
    input is (context + continuation)[-(max_length + 1):][:-1] and its last len(continuation) positions predict the
    continuation."""

    def __init__(self, requests: list[tuple[tuple[int, ...], list[int]]], batch_size: int,
                 min_prefix: int = MIN_SHARED_PREFIX):
        self.n_requests = len(requests)
        # a request's context: the input up to the position predicting its first continuation token
        contexts: dict[tuple[int, ...], dict[tuple[int, ...], list[int]]] = {}
        for r, (inp, cont) in enumerate(requests):
            cut = len(inp) - len(cont) + 1
            contexts.setdefault(inp[:cut], {}).setdefault(inp[cut:], []).append(r)
        self.clusters = [
            _Cluster(None if not prefix else torch.tensor([prefix], dtype=torch.long),
                     _chunks(members, contexts, requests, len(prefix), batch_size, min_prefix))
            for prefix, members in _clusters(sorted(contexts), contexts, min_prefix)
        ]

    def forwards(self, rank: int, world_size: int) -> list[list[_Chunk]]:
        """Per cluster, the chunks process `rank` scores: every `world_size`-th chunk from its `rank` on."""
        numbered = itertools.count()  # chunks numbered across clusters, in order
        return [[chunk for chunk in cluster.chunks if next(numbered) % world_size == rank] for cluster in self.clusters]

    def n_forwards(self, rank: int, world_size: int) -> int:
        """The model calls process `rank` makes: one per chunk, and one per shared prefix it needs."""
        return sum(len(mine) + (bool(mine) and cluster.prefix is not None)
                   for cluster, mine in zip(self.clusters, self.forwards(rank, world_size)))

    @torch.no_grad()
    def score(self, model, rank: int = 0, world_size: int = 1, same_calls: bool = False) -> dict[int, tuple[float, bool]]:
        """(log-likelihood, is-greedy) per request for the model's current weights, in its current mode (the
        caller puts it in eval mode, as HFLM does). With several processes each scores every `world_size`-th chunk
        from its `rank` on: the requests of those chunks. `same_calls` (a model sharded with FSDP2, whose every
        forward all-gathers each layer's parameters across the processes): every process makes as many forward
        calls as the busiest one, the rest on a one-token input whose output is dropped, so the collectives pair up."""
        from transformers import DynamicCache

        device = model.device
        scores: dict[int, tuple[float, bool]] = {}
        mine_of = self.forwards(rank, world_size)
        bar = tqdm(total=sum(len(chunk.requests) for mine in mine_of for chunk in mine), unit=" requests",
                   desc="loglikelihood (shared prefixes)", mininterval=2, disable=rank != 0)
        for cluster, mine in zip(self.clusters, mine_of):
            if not mine:
                continue
            shared, prefix_length = None, 0
            if cluster.prefix is not None:
                shared, prefix_length = DynamicCache(config=model.config), cluster.prefix.shape[1]
                model(input_ids=cluster.prefix.to(device), cache=shared, use_cache=True, logits_to_keep=1)
            for chunk in mine:
                rows = chunk.input_ids.shape[0]
                cache = None if shared is None else DynamicCache(
                    [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v, *_ in shared],
                    config=model.config)
                mask = _attention_mask(chunk.ends, prefix_length, model).to(device)
                # logits only at the scored positions, flattened row by row: (scored positions, vocabulary)
                logits = model(input_ids=chunk.input_ids.to(device), position_ids=(chunk.position_ids + prefix_length).to(device),
                               attention_mask=mask, cache=cache, use_cache=cache is not None,
                               logits_to_keep=chunk.scored.to(device)).logits
                # as HFLM: the log-softmax in the logits' dtype, a token greedy if it is its argmax, a request's sum
                # accumulated in float32 and rounded once to that dtype (as torch's sum does)
                logprobs = torch.log_softmax(logits[chunk.token_index.to(device)], dim=-1)
                tokens = chunk.tokens.to(device)
                token_logprobs = logprobs.gather(-1, tokens[:, None]).squeeze(-1)
                misses = (logprobs.argmax(dim=-1) != tokens).to(torch.int64)
                n, request = len(chunk.requests), chunk.request.to(device)
                logprob = torch.zeros(n, dtype=torch.float32, device=device).index_add_(0, request, token_logprobs.float())
                logprob = logprob.to(token_logprobs.dtype)
                missed = torch.zeros(n, dtype=torch.int64, device=device).index_add_(0, request, misses)
                scores.update((r, (lp, m == 0)) for r, lp, m in zip(chunk.requests, logprob.tolist(), missed.tolist()))
                bar.update(len(chunk.requests))
        bar.close()
        if same_calls:
            busiest = max(self.n_forwards(r, world_size) for r in range(world_size))
            for _ in range(busiest - self.n_forwards(rank, world_size)):
                model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), logits_to_keep=1)
        return scores


def _clusters(contexts: list[tuple[int, ...]], branches: dict, min_prefix: int) -> list[tuple[tuple[int, ...], list[tuple[int, ...]]]]:
    """Sorted contexts cut into runs whose neighbours share at least `min_prefix` tokens; a run of two or more that
    does not fit in one row gets the prefix all of it shares (one token short of its shortest context, which must
    still predict the first continuation token), the rest go together with no prefix. A run that fits in a row
    shares its prefix there: a cache of its own would cost a forward pass of a few rows per run (ETHICS virtue, one
    per scenario: 0.8x HFLM's time on SmolLM2)."""
    runs: list[list[tuple[int, ...]]] = []
    for context in contexts:
        if runs and _common_prefix_length(runs[-1][-1], context) >= min_prefix:
            runs[-1].append(context)
        else:
            runs.append([context])
    out, alone = [], []
    for run in runs:
        length = min(_common_prefix_length(run[0], run[-1]), min(map(len, run)) - 1)  # sorted: the ends bound it
        if len(run) > 1 and length >= min_prefix and _tree_width(run, branches) > MAX_ROW_TOKENS:
            out.append((run[0][:length], run))
        else:
            alone += run
    return out + ([((), alone)] if alone else [])


def _tree_width(run: list[tuple[int, ...]], branches: dict) -> int:
    """The tokens of sorted contexts and their continuations laid out as one token tree."""
    return sum(_added_tokens(previous, context, branches) for previous, context in zip([(), *run], run))


def _added_tokens(previous: tuple[int, ...], context: tuple[int, ...], branches: dict) -> int:
    """What `context` and its distinct continuations add to a tree whose last context (sorted) is `previous`."""
    return len(context) - _common_prefix_length(previous, context) + sum(map(len, branches[context]))


def _common_prefix_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _chunks(members: list[tuple[int, ...]], contexts: dict, requests: list, prefix: int, batch_size: int,
            min_prefix: int = MIN_SHARED_PREFIX) -> list[_Chunk]:
    """Chunks of `batch_size` rows, longest first. A row is a token tree, each token once: neighbouring contexts
    (sorted) that share `min_prefix` tokens or more after the cluster's prefix (ETHICS deontology's excuses of one
    scenario, justice's scenarios that open alike), each with every distinct continuation of its requests."""
    rows: list[list[tuple[int, ...]]] = []
    width = 0  # the last row's tokens, at most: branches that its contexts share are counted once each
    for context in members:
        shared = _common_prefix_length(rows[-1][-1], context) if rows else 0
        grown = width + _added_tokens(rows[-1][-1], context, contexts) if rows else 0
        if rows and shared - prefix >= min_prefix and grown <= MAX_ROW_TOKENS:
            rows[-1].append(context)
            width = grown
        else:
            rows.append([context])
            width = _added_tokens((), context, contexts) - prefix
    trees = sorted((_tree(row, contexts, requests, prefix) for row in rows), key=lambda tree: -len(tree[0]))
    return [_chunk(trees[start:start + batch_size]) for start in range(0, len(trees), batch_size)]


def _tree(row: list[tuple[int, ...]], contexts: dict, requests: list, prefix: int):
    """One row's tokens laid out depth first: (tokens, depths, subtree ends, [(position, token, request)]). Inserting
    the sequences in sorted order creates the nodes depth first, so a node's subtree is the positions from it to its
    end, and its ancestors are what it attends to."""
    sequences = sorted((context[prefix:] + branch, len(context) - prefix, r)
                       for context in row for branch, members_ in contexts[context].items() for r in members_)
    children: list[dict[int, int]] = [{}]  # node 0: the root, before the first token (not laid out)
    parent, tokens, depth, scored = [-1], [0], [-1], []
    for sequence, context_length, r in sequences:
        node, path = 0, []
        for token in sequence:
            if token not in children[node]:
                children[node][token] = len(tokens)
                children.append({})
                parent.append(node)
                tokens.append(token)
                depth.append(depth[node] + 1)
            node = children[node][token]
            path.append(node - 1)  # positions: nodes without the root
        # the context's last position predicts the first continuation token, the branch the rest
        continuation = requests[r][1]
        scored += [(at, token, r) for at, token in zip(path[context_length - 1:], continuation, strict=True)]
    ends = list(range(1, len(tokens)))
    for node in range(len(tokens) - 1, 1, -1):  # children after parents: one pass from the end
        if parent[node] > 0:
            ends[parent[node] - 1] = max(ends[parent[node] - 1], ends[node - 1])
    return tokens[1:], depth[1:], ends, scored


def _chunk(trees) -> _Chunk:
    width = max(len(tree[0]) for tree in trees)
    input_ids = torch.zeros(len(trees), width, dtype=torch.long)
    position_ids = torch.zeros(len(trees), width, dtype=torch.long)
    ends = torch.arange(1, width + 1).repeat(len(trees), 1)  # padding: a leaf of its own
    positions, tokens, owner, chunk_requests, local = [], [], [], [], {}
    for b, (row_tokens, depths, row_ends, scored) in enumerate(trees):
        input_ids[b, :len(row_tokens)] = torch.tensor(row_tokens, dtype=torch.long)
        position_ids[b, :len(row_tokens)] = torch.tensor(depths, dtype=torch.long)
        ends[b, :len(row_tokens)] = torch.tensor(row_ends, dtype=torch.long)
        for at, token, r in scored:
            if r not in local:
                local[r] = len(chunk_requests)
                chunk_requests.append(r)
            positions.append((b, at))
            tokens.append(token)
            owner.append(local[r])
    scored_mask = torch.zeros(len(trees), width, dtype=torch.bool)
    rows_, columns = zip(*positions)
    scored_mask[list(rows_), list(columns)] = True
    # the model returns the scored positions flattened row by row: each one's index there
    flat = torch.full(scored_mask.shape, -1, dtype=torch.long)
    flat[scored_mask] = torch.arange(int(scored_mask.sum()))
    return _Chunk(input_ids, position_ids, ends, scored_mask, flat[list(rows_), list(columns)],
                  torch.tensor(tokens), torch.tensor(owner), chunk_requests)


def _attention_mask(ends: torch.Tensor, prefix: int, model) -> torch.Tensor:
    """(rows, 1, length, prefix + length): every position sees the prefix and its ancestors in its row's tree (the
    positions at or before it whose subtree reaches it), itself included; padding, a leaf after the tree, sees the
    prefix and itself only."""
    rows, length = ends.shape
    position = torch.arange(length)
    within = (position[None, None, :] <= position[None, :, None]) & (ends[:, None, :] > position[None, :, None])
    mask = torch.cat([torch.ones(rows, length, prefix, dtype=torch.bool), within], dim=-1)[:, None]
    if model.config._attn_implementation == "eager":  # additive, where SDPA takes booleans
        return torch.zeros(mask.shape, dtype=model.dtype).masked_fill(~mask, torch.finfo(model.dtype).min)
    return mask


def encode(lm, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """TemplateLM.loglikelihood's tokenisation of one request, with HFLM's rules (an empty context is its prefix token)."""
    if context == "":
        tokens = lm.tok_encode(continuation, add_special_tokens=False)
        return ([lm.prefix_token_id], tokens) if lm.prefix_token_id != tokens[0] else (tokens[:1], tokens[1:])
    return lm._encode_pair(context, continuation)


def truncated(lm, context: list[int], continuation: list[int]) -> tuple[tuple[int, ...], list[int]]:
    """The model input HFLM feeds for a request: left-truncated to max_length, the last token dropped."""
    return tuple((context + continuation)[-(lm.max_length + 1):][:-1]), continuation


class SharedPrefixLM(HFLM):
    """lm-eval's HFLM whose loglikelihood requests are scored by a `SharedPrefixScorer`: the same results, with the
    shared contexts and prefixes computed once (module docstring). Everything else is HFLM's."""

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        batch_size = override_bs or (self.batch_size if self.batch_size != "auto" else 16)
        scores = SharedPrefixScorer([truncated(self, ctx, cont) for _, ctx, cont in requests], batch_size).score(self.model)
        return [scores[r] for r in range(len(requests))]


@dataclass
class _Task:
    name: str
    task: Any                            # lm-eval's Task
    docs: list[tuple[int, dict]]         # (doc_id as lm-eval's samples number it, doc)
    requests_per_doc: list[list[int]]    # doc -> its requests (scorer indices), ordered by lm-eval's idx


class StepwiseEvaluator:
    """Evaluates `model` (any causal LM of transformers taking `cache`, `position_ids`, a 4-D attention mask and
    `logits_to_keep`; with LoRA unmerged too) on the loglikelihood tasks of `tasks` (from `nlp.load_tasks`), on the
    documents `samples` names per task. The requests of every task are planned together, once."""

    def __init__(self, model, tokenizer, tasks: dict[str, Any], *, samples: dict[str, list[int]] | None = None,
                 batch_size: int = 16, add_bos_token: bool | None = None):
        self.model, self.groups = model, tasks.get("groups", {})
        reseed_fewshot(tasks)
        requests: list[tuple[tuple[int, ...], list[int]]] = []
        with quiet():
            # HFLM's tokenisation and truncation rules, applied once to every request
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=add_bos_token)
            self.tasks = [self._prepare(name, task, lm, (samples or {}).get(name), requests)
                          for name, task in tasks["tasks"].items()]
        self.scorer = SharedPrefixScorer(requests, batch_size)

    @staticmethod
    def _prepare(name: str, task, lm, indices: list[int] | None, requests: list) -> _Task:
        if task.OUTPUT_TYPE not in _LOGLIKELIHOOD_TYPES or task.config.filter_list is not None:
            raise ValueError(f"{name}: step-wise evaluation scores loglikelihood tasks without filters; "
                             f"{name} is {task.OUTPUT_TYPE}")
        task.build_all_requests(samples=indices, rank=0, world_size=1)
        docs = list(task.doc_iterator(rank=0, world_size=1, samples=indices))
        position = {doc_id: i for i, (doc_id, _) in enumerate(docs)}
        requests_per_doc: list[list[int]] = [[] for _ in docs]
        for instance in sorted(task.instances, key=lambda inst: (inst.doc_id, inst.idx)):
            requests_per_doc[position[instance.doc_id]].append(len(requests))
            requests.append(truncated(lm, *encode(lm, *instance.args)))
        return _Task(name, task, [(indices[doc_id] if indices else doc_id, doc) for doc_id, doc in docs], requests_per_doc)

    def run(self) -> StepwiseResult:
        """The tasks' metrics and per-document results for the model's current weights (in its current mode: the
        caller puts it in eval mode, as HFLM does). In a distributed run every process must call it: each scores its
        share of the requests (every process holds the whole model under DDP; under FSDP2 each forward gathers it), and
        all get every score."""
        from accelerate import PartialState
        from accelerate.utils import gather_object

        state = PartialState()
        scores = self.scorer.score(self.model, state.process_index, state.num_processes, same_calls=fsdp2_sharded(self.model))
        if state.num_processes > 1:
            scores = {r: score for part in gather_object([scores]) for r, score in part.items()}
        docs = {task.name: [DocResult(doc_id, [scores[r][0] for r in requests], [scores[r][1] for r in requests],
                                      task.task.process_results(doc, [scores[r] for r in requests]))
                            for (doc_id, doc), requests in zip(task.docs, task.requests_per_doc)]
                for task in self.tasks}
        return StepwiseResult(self.metrics(docs), docs)

    def metrics(self, docs: dict[str, list[DocResult]]) -> dict[str, float]:
        """lm-eval's aggregation of per-document results (any subset of the documents run) into our metrics."""
        results: dict[str, dict[str, Any]] = {task.name: _aggregate(task.task, docs[task.name]) for task in self.tasks}
        for group in self.groups.values():
            results[group.name] = group.aggregate(results)
        return metrics_from_results(results)


def fsdp2_sharded(model) -> bool:
    """Whether any part of `model` is sharded by FSDP2's `fully_shard` (which gathers its parameters in its own
    forward, so a sharded model scores as a whole one if every process calls it alike)."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())


def _aggregate(task, docs: list[DocResult]) -> dict[str, Any]:
    """lm-eval's per-task result: each metric's aggregation over the documents, keyed "<metric>,none"."""
    aggregation = task.aggregation()
    return {f"{metric},none": aggregation[metric]([doc.values[metric] for doc in docs if metric in doc.values])
            for metric in dict.fromkeys(m for doc in docs for m in doc.values)} | {"sample_len": len(docs)}
