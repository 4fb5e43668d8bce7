"""SQuAD loading (hub, local SQuAD JSON, synthetic offline) and causal-LM preprocessing.

Every loader yields records in the layout of the hub dataset ``squad``::

    {"id", "title", "context", "question", "answers": {"text": [...], "answer_start": [...]}}

with ``answers.text == []`` for SQuAD 2.0's unanswerable questions. Preprocessing turns a record
into ``question: … / context: … / answer: <answer></s>`` with the loss on the answer tokens only,
and drops (and counts) examples whose answer would not fit in ``max_length``: truncation never
cuts the answer silently. Tokenization runs once per (data, tokenizer, length, sizes) in the
driver and is cached on disk; trials only load the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.config import ConfigError, DataConfig, hub_dataset_problem
from harness.trial.cache import SPLITS, dataset_complete, dataset_slot

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 1
UNANSWERABLE_TARGET = "unanswerable"


class DataError(ConfigError):
    """The data source is unusable; the message names it and the fix."""


# --------------------------------------------------------------------------- loaders

def _record(rid: str, title: str, context: str, question: str, answers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": rid,
        "title": title,
        "context": context,
        "question": question,
        "answers": {
            "text": [a["text"] for a in answers],
            "answer_start": [int(a["answer_start"]) for a in answers],
        },
    }


def read_squad_json(path: str | Path) -> list[list[dict[str, Any]]]:
    """Records of an official SQuAD v1.1/v2.0 JSON file, grouped by paragraph (context)."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"data.source={str(path)!r} does not exist; give a SQuAD JSON file, synthetic or hub:rajpurkar/squad") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"data.source={str(path)!r} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise DataError(
            f"data.source={str(path)!r} is not in the SQuAD layout "
            '({"version", "data": [{"title", "paragraphs": [...]}]})'
        )
    groups: list[list[dict[str, Any]]] = []
    for article in payload["data"]:
        title = article.get("title", "")
        for paragraph in article.get("paragraphs", []):
            context = paragraph["context"]
            group = []
            for qa in paragraph.get("qas", []):
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                group.append(_record(qa["id"], title, context, qa["question"], answers))
            if group:
                groups.append(group)
    return groups


def _split_groups(groups: list[list[dict[str, Any]]], eval_fraction: float, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Split by paragraph, so no context is seen in both training and validation."""
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(groups) - 1, max(1, round(len(groups) * eval_fraction)))
    if n_eval < 1:
        raise DataError("the SQuAD file has a single paragraph; it cannot be split into train and validation")
    val = [r for i in order[:n_eval] for r in groups[i]]
    train = [r for i in order[n_eval:] for r in groups[i]]
    return {"train": train, "validation": val}


def load_hub(name: str, split: str, **kwargs: Any) -> Iterable[dict[str, Any]]:
    """A split of a hub dataset (``rajpurkar/squad``) or a local dataset folder, through ``datasets``.

    Only ``make prepare`` calls this: runs read the records it saved in the harness cache
    (:func:`load_squad` with ``cache_dir``), so a compute node never needs the hub.
    """
    import datasets  # heavy import; only this source needs it

    try:
        return datasets.load_dataset(name, split=split, **kwargs)
    except (FileNotFoundError, ConnectionError, ValueError) as exc:
        raise DataError(
            f"data.source='hub:{name}' split {split!r} could not be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); run `make prepare` where there is network, "
            "or use a local SQuAD JSON file or data.source=synthetic"
        ) from None


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


# Synthetic data: short paragraphs of facts about invented people, with questions whose answer is
# a span of the paragraph. A small model first learns the answer *type* from the question (cities
# for "where", colours for "favourite colour", ...) and then to copy the right span: eval loss falls
# steeply with a good learning rate and hardly moves with a tiny one, which is the signal PBT needs.
_SYLLABLES = ["ka", "lo", "mi", "ru", "ten", "vo", "sa", "bel", "dor", "fi", "gan", "hu", "jex", "ni", "pra", "zo"]
_RELATIONS = [
    ("lives in", "Where does {p} live?", ["Amsterdam", "Lisbon", "Nairobi", "Osaka", "Quito", "Tromso", "Perth", "Zagreb"]),
    ("works as a", "What does {p} work as?", ["baker", "pilot", "nurse", "farmer", "painter", "lawyer", "plumber", "teacher"]),
    ("has a favourite colour,", "What is the favourite colour of {p}?", ["red", "blue", "green", "yellow", "purple", "orange", "silver", "black"]),
    ("was born in the year", "In which year was {p} born?", ["1961", "1974", "1983", "1990", "1999", "2004", "2011", "1958"]),
    ("keeps a pet", "Which pet does {p} keep?", ["cat", "parrot", "turtle", "rabbit", "goat", "hamster", "dog", "snake"]),
]


def _person(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def synthetic_squad(seed: int, split: str) -> Iterator[dict[str, Any]]:
    """An endless, deterministic stream of SQuAD-format records; ``split`` picks a disjoint stream."""
    rng = random.Random(f"synthetic-squad/{seed}/{split}")
    index = 0
    while True:
        people = []
        while len(people) < 3:
            name = _person(rng)
            if name not in people:
                people.append(name)
        facts = []
        for name in people:
            rel_idx = rng.randrange(len(_RELATIONS))
            facts.append((name, rel_idx, rng.choice(_RELATIONS[rel_idx][2])))
        context = ""
        spans = []
        for name, rel_idx, value in facts:
            prefix = f"{name} {_RELATIONS[rel_idx][0]} "
            spans.append(len(context) + len(prefix))
            context += f"{prefix}{value}. "
        context = context.strip()
        which = rng.randrange(len(facts))
        name, rel_idx, value = facts[which]
        yield _record(
            f"synthetic-{split}-{index}",
            f"synthetic-{seed}",
            context,
            _RELATIONS[rel_idx][1].format(p=name),
            [{"text": value, "answer_start": spans[which]}],
        )
        index += 1


def load_squad(source: str, *, seed: int = 0, eval_fraction: float = 0.1,
               cache_dir: str | Path | None = None) -> dict[str, Iterable[dict[str, Any]]]:
    """Records per split (``train``, ``validation``) from ``source``.

    ``synthetic``: the offline generator; ``hub:<namespace>/<name>``: ``datasets.load_dataset(name)``,
    e.g. ``hub:rajpurkar/squad``, or ``hub:/path/to/dataset_folder``; anything else: a SQuAD JSON file, split by
    paragraph (``eval_fraction`` of the paragraphs, shuffled with ``seed``, go to validation).
    With ``cache_dir``, the records ``make prepare`` saved there are read instead of the hub, and
    instead of a SQuAD file that is not here (a compute node without the login node's path).
    """
    if source == "synthetic":
        return {split: synthetic_squad(seed, split) for split in SPLITS}
    if source.startswith("hub:"):
        problem = hub_dataset_problem(source)
        if problem:
            raise DataError(problem)
    saved = _saved_raw(source, cache_dir)
    if saved is not None and (saved / "train.jsonl").is_file():
        return {split: _read_jsonl(saved / f"{split}.jsonl") for split in SPLITS}
    if saved is not None:
        return _split_groups(read_squad_json(saved / "squad.json"), eval_fraction, seed)
    if source.startswith("hub:"):
        return {split: load_hub(source.removeprefix("hub:"), split) for split in SPLITS}
    return _split_groups(read_squad_json(source), eval_fraction, seed)


def _saved_raw(source: str, cache_dir: str | Path | None) -> Path | None:
    if cache_dir is None or (not source.startswith("hub:") and Path(source).is_file()):
        return None
    folder = dataset_slot(Path(cache_dir), source)
    return folder if dataset_complete(folder) else None


# --------------------------------------------------------------------------- preprocessing

def format_prompt(record: Mapping[str, Any]) -> str:
    return f"question: {record['question'].strip()}\ncontext: {record['context'].strip()}\nanswer:"


@dataclass
class SplitStats:
    seen: int = 0
    kept: int = 0
    dropped_too_long: int = 0
    unanswerable_skipped: int = 0
    unanswerable_kept: int = 0
    answer_not_in_context: int = 0


@dataclass
class Prepared:
    """Tokenized splits: variable-length ``input_ids``/``labels`` lists (padded per batch)."""

    splits: dict[str, dict[str, list[list[int]]]]
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def tokenize_split(
    records: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    *,
    max_length: int,
    limit: int,
    unanswerable: str = "skip",
) -> tuple[dict[str, list[list[int]]], SplitStats]:
    """Tokenize records until ``limit`` examples are kept; loss only on answer + EOS tokens."""
    stats = SplitStats()
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos token; the answer could not be terminated")
    for record in records:
        if stats.kept >= limit:
            break
        stats.seen += 1
        texts = record["answers"]["text"]
        if not texts:
            if unanswerable == "skip":
                stats.unanswerable_skipped += 1
                continue
            answer = UNANSWERABLE_TARGET
            stats.unanswerable_kept += 1
        else:
            answer = texts[0]
            start = record["answers"]["answer_start"][0]
            if record["context"][start:start + len(answer)] != answer:
                stats.answer_not_in_context += 1
        prompt_ids = tokenizer(format_prompt(record), add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"] + [eos]
        if len(prompt_ids) + len(answer_ids) > max_length:
            stats.dropped_too_long += 1
            continue
        input_ids.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)
        stats.kept += 1
    return {"input_ids": input_ids, "labels": labels}, stats


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_fingerprint(source: str, cache_dir: str | Path | None = None) -> str:
    if source == "synthetic":
        return f"synthetic-v{PREPROCESS_VERSION}"
    if source.startswith("hub:"):
        return source
    saved = _saved_raw(source, cache_dir)
    path = saved / "squad.json" if saved is not None else Path(source)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        raise DataError(f"data.source={source!r} does not exist and is not in the prepared cache; "
                        "give a SQuAD JSON file, or run `make prepare` with it") from None
    return f"file-{digest}"


def cache_key(data: DataConfig, *, seed: int, tokenizer_fp: str, max_length: int,
              cache_dir: str | Path | None = None) -> str:
    payload = json.dumps(
        {
            "source": source_fingerprint(data.source, cache_dir),
            "train": data.train_samples,
            "eval": data.eval_samples,
            "unanswerable": data.unanswerable,
            "seed": seed,
            "tokenizer": tokenizer_fp,
            "max_length": max_length,
            "version": PREPROCESS_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def cached_tokenized(data: DataConfig, tokenizer: Any, *, seed: int, max_length: int, cache_dir: str | Path) -> Path:
    """Where the tokenized splits of this (data, tokenizer, length, seed) live in the cache."""
    key = cache_key(data, seed=seed, tokenizer_fp=tokenizer_fingerprint(tokenizer), max_length=max_length,
                    cache_dir=cache_dir)
    return Path(cache_dir) / "data" / f"squad-{key}.pt"


def prepare(data: DataConfig, tokenizer: Any, *, seed: int, max_length: int, cache_dir: str | Path) -> Path:
    """Tokenize once and cache; returns the cache file. A second call with the same key only reads."""
    path = cached_tokenized(data, tokenizer, seed=seed, max_length=max_length, cache_dir=cache_dir)
    key = path.stem.removeprefix("squad-")
    if path.is_file():
        log.info("tokenized data cache hit: %s", path)
        return path
    log.info("tokenizing %s into %s", data.source, path)
    raw = load_squad(data.source, seed=seed, cache_dir=cache_dir)
    limits = {"train": data.train_samples, "validation": data.eval_samples}
    splits: dict[str, dict[str, list[list[int]]]] = {}
    stats: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        tensors, split_stats = tokenize_split(
            raw[split], tokenizer, max_length=max_length, limit=limits[split], unanswerable=data.unanswerable
        )
        if split_stats.kept == 0:
            raise DataError(
                f"data.source={data.source!r} gave no usable {split} example (seen {split_stats.seen}, "
                f"too long for model.max_length={max_length}: {split_stats.dropped_too_long}, unanswerable "
                f"skipped: {split_stats.unanswerable_skipped}); raise model.max_length or use another source"
            )
        if split_stats.kept < limits[split]:
            log.warning("%s: only %d of %d %s examples usable", data.source, split_stats.kept, limits[split], split)
        splits[split] = tensors
        stats[split] = vars(split_stats)
    meta = {"key": key, "source": data.source, "max_length": max_length, "version": PREPROCESS_VERSION}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"splits": splits, "stats": stats, "meta": meta}, tmp)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none
    return path


def load_prepared(path: str | Path) -> Prepared:
    payload = torch.load(path, weights_only=True)
    return Prepared(splits=payload["splits"], stats=payload["stats"], meta=payload["meta"])


class TokenizedDataset(torch.utils.data.Dataset):
    def __init__(self, split: Mapping[str, list[list[int]]]):
        self.input_ids = split["input_ids"]
        self.labels = split["labels"]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}


class PadCollator:
    """Pads a batch to its longest example: ``pad_id`` for inputs, -100 for labels."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[Mapping[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
