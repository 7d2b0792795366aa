"""Corpus loading through `datasets`, vocabulary, batching."""

import os

import pytest
import torch

from vqbench.training import data

WIKITEXT = data.default_corpus_dir()
needs_wikitext = pytest.mark.skipif(not os.path.isdir(WIKITEXT), reason=f"no corpus at {WIKITEXT}")


def write_corpus(folder, train, valid, test):
    folder.mkdir(exist_ok=True)
    for name, text in (("train.txt", train), ("valid.txt", valid), ("test.txt", test)):
        (folder / name).write_text(text)
    return str(folder)


def test_tiny_corpus_vocabulary_and_eos(tmp_path):
    source = write_corpus(tmp_path / "c", "a b a\n\nc a b\n", "b a\n", "c\n")
    corpus = data.load_corpus(source, cache_dir=str(tmp_path / "cache"))
    assert corpus.itos == ["a", data.EOS, "b", "c"]          # count 3, 3 (a appears first), 2, 1
    assert corpus.counts.tolist() == sorted(corpus.counts.tolist(), reverse=True)
    assert corpus.ids["train"].numel() == 3 + 1 + 1 + 3 + 1          # an <eos> per line, empty ones too
    assert [corpus.itos[i] for i in corpus.ids["validation"]] == ["b", "a", data.EOS]


def test_missing_corpus_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_corpus(str(tmp_path / "nowhere"))
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "train.txt").write_text("a\n")
    with pytest.raises(FileNotFoundError, match="valid.txt"):
        data.load_corpus(str(partial))


def test_unknown_words_in_eval_splits_are_an_error(tmp_path):
    source = write_corpus(tmp_path / "c", "a b\n", "zebra\n", "a\n")
    with pytest.raises(ValueError, match="validation.*zebra"):
        data.load_corpus(source, cache_dir=str(tmp_path / "cache"))


def test_batchify_and_bptt():
    ids = torch.arange(23)
    streams = data.batchify(ids, 4)
    assert streams.shape == (4, 5) and streams[1, 0] == 5
    windows = list(data.bptt_batches(streams, 3))
    assert [w[0].shape[1] for w in windows] == [3, 1]
    for x, y in windows:
        assert torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="batch_size"):
        data.batchify(ids, 0)
    with pytest.raises(ValueError, match="seq_len"):
        list(data.bptt_batches(streams, 0))


@needs_wikitext
def test_wikitext2_matches_the_published_counts():
    corpus = data.load_corpus(WIKITEXT)
    assert corpus.vocab_size == 33278
    assert [corpus.ids[s].numel() for s in data.SPLITS] == [2088628, 217646, 245569]
    assert corpus.itos[0] == "the" and corpus.counts[0] == corpus.counts.max()


def test_subword_ids_are_kept_on_disk_and_read_back_without_tokenising(tmp_path, monkeypatch):
    pytest.importorskip("tiktoken")
    monkeypatch.setenv("VQBENCH_CACHE", str(tmp_path / "kept"))
    source = write_corpus(tmp_path / "c", "The cat sat.\nOn the mat.\n", "The mat.\n", "A cat.\n")
    data._load_corpus.cache_clear()
    first = data.load_corpus(source, vocabulary="cl100k_base")
    kept = list((tmp_path / "kept").iterdir())
    assert len(kept) == 1 and kept[0].name.startswith("cl100k_base-") and kept[0].suffix == ".pt"
    data._load_corpus.cache_clear()
    monkeypatch.setattr(data, "build_subword_corpus", lambda lines: pytest.fail("tokenised again"))
    again = data.load_corpus(source, vocabulary="cl100k_base")
    assert again.itos == first.itos and torch.equal(again.counts, first.counts)
    assert all(torch.equal(again.ids[s], first.ids[s]) for s in data.SPLITS)
    assert data.corpus_fingerprint(again) == data.corpus_fingerprint(first)
    data._load_corpus.cache_clear()


def test_an_edited_corpus_or_a_damaged_cache_is_tokenised_again(tmp_path, monkeypatch):
    pytest.importorskip("tiktoken")
    monkeypatch.setenv("VQBENCH_CACHE", str(tmp_path / "kept"))
    source = write_corpus(tmp_path / "c", "The cat sat.\n", "The cat.\n", "A cat.\n")
    data._load_corpus.cache_clear()
    data.load_corpus(source, vocabulary="cl100k_base")
    (tmp_path / "c" / "train.txt").write_text("The dog sat.\n")  # new content: a second cache entry
    data._load_corpus.cache_clear()
    edited = data.load_corpus(source, vocabulary="cl100k_base")
    assert "dog" in "".join(edited.itos[int(i)] for i in edited.ids["train"])
    assert len(list((tmp_path / "kept").iterdir())) == 2
    for damaged in (b"not a torch file", None):
        for path in (tmp_path / "kept").iterdir():
            if damaged is None:  # a readable file holding ids outside its vocabulary
                torch.save({"itos": ["a"], "counts": torch.ones(1, dtype=torch.int64),
                            "ids": {s: torch.tensor([5]) for s in data.SPLITS}}, path)
            else:
                path.write_bytes(damaged)
        data._load_corpus.cache_clear()
        with pytest.warns(UserWarning, match="corpus cache .* is unreadable"):
            rebuilt = data.load_corpus(source, vocabulary="cl100k_base")
        assert torch.equal(rebuilt.ids["train"], edited.ids["train"])
    monkeypatch.setenv("VQBENCH_CACHE", "off")
    data._load_corpus.cache_clear()
    data.load_corpus(source, vocabulary="cl100k_base")
    assert len(list((tmp_path / "kept").iterdir())) == 2
    data._load_corpus.cache_clear()
