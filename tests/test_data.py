from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from harness.trial import data
from harness.config import DataConfig
from harness.trial.data import DataError, PadCollator, load_prepared, load_squad, prepare, tokenize_split


def _take(records, n):
    return list(itertools.islice(records, n))


def test_synthetic_is_deterministic_and_answers_are_spans():
    a = _take(data.synthetic_squad(7, "train"), 50)
    b = _take(data.synthetic_squad(7, "train"), 50)
    assert a == b
    assert a != _take(data.synthetic_squad(8, "train"), 50)
    val = _take(data.synthetic_squad(7, "validation"), 50)
    assert not {r["question"] + r["context"] for r in a} & {r["question"] + r["context"] for r in val}
    for r in a:
        text, start = r["answers"]["text"][0], r["answers"]["answer_start"][0]
        assert r["context"][start:start + len(text)] == text


def test_local_squad_v2_file_is_read_as_it_is(squad_sample: Path):
    splits = load_squad(str(squad_sample), seed=0, eval_fraction=0.2)
    records = list(splits["train"]) + list(splits["validation"])
    assert len(records) == 1407  # the sample's README: 1,407 questions
    unanswerable = [r for r in records if not r["answers"]["text"]]
    assert len(unanswerable) == 702
    # split by paragraph: no context in both splits
    train_ctx = {r["context"] for r in splits["train"]}
    assert not train_ctx & {r["context"] for r in splits["validation"]}
    for r in records:
        for text, start in zip(r["answers"]["text"], r["answers"]["answer_start"]):
            assert r["context"][start:start + len(text)] == text


def test_unanswerable_questions_are_skipped_and_counted_or_targeted(squad_sample, tiny_tokenizer):
    records = list(load_squad(str(squad_sample), seed=0)["train"])
    _, skip = tokenize_split(records, tiny_tokenizer, max_length=4096, limit=10**6, unanswerable="skip")
    assert skip.unanswerable_skipped > 600 and skip.kept + skip.unanswerable_skipped == skip.seen
    out, target = tokenize_split(records, tiny_tokenizer, max_length=4096, limit=10**6, unanswerable="target")
    assert target.unanswerable_kept == skip.unanswerable_skipped and target.kept == skip.seen
    answers = [tiny_tokenizer.decode([t for t in lab if t != -100]) for lab in out["labels"]]
    assert sum(a.strip() == "unanswerable</s>" for a in answers) == target.unanswerable_kept


def test_loss_is_on_the_answer_tokens_only(tiny_tokenizer):
    record = next(data.synthetic_squad(1, "train"))
    out, stats = tokenize_split([record], tiny_tokenizer, max_length=256, limit=1)
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert len(ids) == len(labels) and stats.kept == 1
    answer_ids = [t for t in labels if t != -100]
    assert tiny_tokenizer.decode(answer_ids).strip() == record["answers"]["text"][0] + "</s>"
    prompt = tiny_tokenizer.decode(ids[: len(ids) - len(answer_ids)])
    assert prompt.startswith("question: ") and "\ncontext: " in prompt and prompt.endswith("\nanswer:")


def test_truncation_never_cuts_the_answer(squad_sample, tiny_tokenizer):
    records = list(load_squad(str(squad_sample), seed=0)["train"])
    out, stats = tokenize_split(records, tiny_tokenizer, max_length=160, limit=10**6)
    assert stats.dropped_too_long > 0, "real SQuAD contexts are longer than 160 tiny-BPE tokens"
    assert stats.kept + stats.dropped_too_long + stats.unanswerable_skipped == stats.seen
    for ids, labels in zip(out["input_ids"], out["labels"]):
        assert len(ids) <= 160
        assert labels[-1] == tiny_tokenizer.eos_token_id  # the whole answer and its EOS are there


def test_limits_give_the_preset_sizes(tiny_tokenizer):
    out, stats = tokenize_split(data.synthetic_squad(0, "train"), tiny_tokenizer, max_length=96, limit=37)
    assert stats.kept == len(out["input_ids"]) == 37


def test_prepare_tokenizes_once_and_caches(tiny_tokenizer, tmp_path, monkeypatch):
    cfg = DataConfig(source="synthetic", train_samples=20, eval_samples=5)
    path = prepare(cfg, tiny_tokenizer, seed=3, max_length=96, cache_dir=tmp_path)
    prepared = load_prepared(path)
    assert len(prepared.splits["train"]["input_ids"]) == 20 and len(prepared.splits["validation"]["input_ids"]) == 5
    assert prepared.stats["train"]["kept"] == 20

    def boom(*a, **k):
        raise AssertionError("re-tokenized although the cache holds this key")

    monkeypatch.setattr(data, "tokenize_split", boom)
    assert prepare(cfg, tiny_tokenizer, seed=3, max_length=96, cache_dir=tmp_path) == path
    # another length is another key
    monkeypatch.undo()
    other = prepare(cfg, tiny_tokenizer, seed=3, max_length=80, cache_dir=tmp_path)
    assert other != path and other.is_file()


def test_prepare_refuses_a_source_with_no_usable_example(squad_sample, tiny_tokenizer, tmp_path):
    cfg = DataConfig(source=str(squad_sample), train_samples=10, eval_samples=5)
    with pytest.raises(DataError, match="raise model.max_length"):
        prepare(cfg, tiny_tokenizer, seed=0, max_length=16, cache_dir=tmp_path)


def test_hub_loader_reads_a_local_dataset_folder_offline(tmp_path, tiny_tokenizer):
    """The hub path is `datasets.load_dataset(name)`; a local folder stands in for the hub."""
    folder = tmp_path / "squad_local"
    folder.mkdir()
    for split, n in (("train", 12), ("validation", 4)):
        rows = _take(data.synthetic_squad(5, split), n)
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    splits = load_squad(f"hub:{folder}")
    assert [r["id"] for r in splits["train"]] == [f"synthetic-train-{i}" for i in range(12)]
    cfg = DataConfig(source=f"hub:{folder}", train_samples=10, eval_samples=4)
    prepared = load_prepared(prepare(cfg, tiny_tokenizer, seed=0, max_length=96, cache_dir=tmp_path))
    assert len(prepared.splits["train"]["input_ids"]) == 10


def test_hub_dataset_missing_offline_is_one_clear_error():
    with pytest.raises(DataError, match="run `make prepare` where there is network"):
        list(load_squad("hub:nobody/this-dataset-does-not-exist-here")["train"])


def test_a_bare_legacy_hub_name_is_refused_with_its_canonical_id():
    with pytest.raises(DataError, match=r"data.source='hub:squad' is a bare hub name, .* write hub:rajpurkar/squad$"):
        load_squad("hub:squad")


def test_bad_squad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="is not JSON"):
        load_squad(str(bad))
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(DataError, match="not in the SQuAD layout"):
        load_squad(str(bad))


def test_collator_pads_inputs_and_masks_labels():
    batch = PadCollator(pad_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
