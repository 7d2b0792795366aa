"""Hostile corpus files: empty, binary, truncated UTF-8, edited in place behind the cache. Each gives one
ValueError naming the file, or the corpus the files hold now."""

import os

import pytest

from vqbench.training import data


def write_corpus(folder, train="a b a\nc a b\n", valid="b a\n", test="c\n"):
    folder.mkdir(exist_ok=True)
    for name, text in (("train.txt", train), ("valid.txt", valid), ("test.txt", test)):
        path = folder / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(folder)


@pytest.mark.parametrize("split, name", [("train", "train.txt"), ("valid", "valid.txt"), ("test", "test.txt")])
@pytest.mark.parametrize("content, match", [
    (b"", "holds no words"),
    (b"\n\n  \n", "holds no words"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not valid UTF-8"),
    (b"a b\x00c\n", "not a text file"),
    (b"a b caf\xc3", "not valid UTF-8"),            # truncated inside a two-byte character
    (b"a \xe2\x82\n b\n", "not valid UTF-8"),          # a three-byte character cut short
])
def test_a_bad_file_is_named_in_one_line(tmp_path, split, name, content, match):
    texts = {"train": "a b a\nc a b\n", "valid": "b a\n", "test": "c\n"}
    texts[split] = content
    source = write_corpus(tmp_path / "c", **texts)
    with pytest.raises(ValueError, match=f"^corpus: .*{name}.*{match}") as error:
        data.load_corpus(source, cache_dir=str(tmp_path / "cache"))
    assert "\n" not in str(error.value)


def test_a_file_edited_in_place_with_its_size_and_times_kept_is_read_again(tmp_path):
    source = write_corpus(tmp_path / "c", train="a b a\nc a b\n")
    first = data.load_corpus(source, cache_dir=str(tmp_path / "cache"))
    path = os.path.join(source, "train.txt")
    stat = os.stat(path)
    with open(path, "r+b") as f:  # same length, same times: only the content differs
        f.write(b"b a b\nc b a\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size and os.stat(path).st_mtime_ns == stat.st_mtime_ns
    again = data.load_corpus(source, cache_dir=str(tmp_path / "cache"))
    assert first.itos[0] == "a" and again.itos[0] == "b"
    assert data.corpus_fingerprint(again) != data.corpus_fingerprint(first)


def test_lines_match_the_datasets_text_loader(tmp_path):
    datasets = pytest.importorskip("datasets")
    text = "\ufeffa b\r\nc\rd\u2028e\x0cf\n\n  g  \nlast"
    source = write_corpus(tmp_path / "c", train=text, valid=text, test=text)
    files = {split: os.path.join(source, name) for split, name in data.LOCAL_FILES.items()}
    theirs = datasets.load_dataset("text", data_files=files, cache_dir=str(tmp_path / "cache"))
    for split, path in files.items():
        assert data.read_lines(path, split) == theirs[split]["text"]
