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
