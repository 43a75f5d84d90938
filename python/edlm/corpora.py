"""The bundled corpora (Austen's novels, the King James Bible; corpus/NOTICE.md), the named
datasets built on them (`austen-char`, `kjv-gpt2`, ...: corpus, tokenizer, splits; `austen-oracle`:
samples of a Markov source fitted to the novels, `austen_oracle`) and the cache
of prepared token files ($EDLM_CACHE), with `dataset_path` resolving a name or a path to one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import lzma
import os
from importlib import resources
from pathlib import Path

import torch

from .oracle import MarkovSource
from .prepare import (
    FORMAT,
    VERSION,
    expand_inputs,
    is_hf_dataset,
    is_prepared,
    prepare,
    read_header,
    write_tokens,
)
from .tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "CORPORA",
    "NAMED_DATASETS",
    "ORACLE_ORDER",
    "austen_oracle",
    "cache_dir",
    "corpus_documents",
    "dataset_path",
    "dataset_tokenizer",
    "eval_split",
]

# Bundled corpora (see corpus/NOTICE.md): split -> files under edlm/corpus.
CORPORA = {
    "austen": {
        "train": tuple(
            f"austen/{b}.txt.xz"
            for b in (
                "sensesensibility",
                "prideprejudice",
                "mansfieldpark",
                "emma",
                "northangerabbey",
            )
        ),
        "valid": ("austen/persuasion.txt.xz",),
    },
    "kjv": {"test": ("kjv.txt.xz",)},
}
NAMED_DATASETS = {f"{c}-{t}": (c, t) for c in CORPORA for t in ("char", "gpt2")}
NAMED_DATASETS["austen-oracle"] = ("austen-oracle", "char")
EVAL_SPLIT = {"austen": "valid", "kjv": "test", "austen-oracle": "valid"}  # held-out splits

# austen-oracle: fresh samples of the Markov source fitted to Austen's training novels
# (edlm.oracle), as stationary chains of CHAIN characters (a multiple of every usual block size,
# so no block straddles two chains): split -> (number of chains, seed).
ORACLE_ORDER = 2  # characters of context: a trigram chain (edlm.oracle says why)
ORACLE_SPLITS = {"train": (2048, 1), "valid": (128, 2), "test": (128, 3)}
ORACLE_CHAIN = 4096


@functools.cache
def austen_oracle(order: int = ORACLE_ORDER) -> MarkovSource:
    """The bundled oracle source: the Markov chain of `order` fitted to Austen's five training
    novels (deterministic: the same tables, `digest`, on every machine)."""
    return MarkovSource.fit(corpus_documents("austen", "train"), order)


def _oracle_path(name: str, split: str | None) -> Path:
    split = split or "train"
    if split not in ORACLE_SPLITS:
        raise ValueError(f"unknown split {split!r} for {name!r} (it has {sorted(ORACLE_SPLITS)})")
    source = austen_oracle()
    chains, seed = ORACLE_SPLITS[split]
    fp = _fingerprint(name, split, source.digest(), chains, ORACLE_CHAIN, seed, "inverse-cdf-1")
    out = cache_dir() / name / f"{split}.bin"
    if not _is_current(out, fp):
        gen = torch.Generator().manual_seed(seed)
        pieces = (
            source.sample(min(256, chains - i), ORACLE_CHAIN, generator=gen).numpy()
            for i in range(0, chains, 256)
        )
        extra = {
            "dataset": name,
            "split": split,
            "fingerprint": fp,
            "source": f"Markov chain of order {source.order} fitted to Austen, sha256 "
            f"{source.digest()}",
        }
        write_tokens(pieces, "char", out, extra=extra)
    return out


def dataset_tokenizer(name: str) -> str | None:
    """The tokenizer a named dataset is prepared with (None for a path)."""
    return NAMED_DATASETS[name][1] if name in NAMED_DATASETS else None


def eval_split(name: str) -> str | None:
    """The held-out split of a named dataset (None for a path, which is one split)."""
    return EVAL_SPLIT[NAMED_DATASETS[name][0]] if name in NAMED_DATASETS else None


def cache_dir() -> Path:
    """Where prepared datasets go: $EDLM_CACHE, else ~/.cache/edlm."""
    return Path(os.environ.get("EDLM_CACHE") or Path.home() / ".cache" / "edlm").expanduser()


def _corpus_split(corpus: str, split: str | None, what: str) -> str:
    splits = CORPORA[corpus]
    if split is None:
        return "train" if "train" in splits else next(iter(splits))
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for {what!r} (it has {sorted(splits)})")
    return split


def _corpus_files(corpus: str, split: str):
    return [resources.files("edlm") / "corpus" / f for f in CORPORA[corpus][split]]


def corpus_documents(corpus: str, split: str | None = None) -> list[str]:
    """The raw texts of a bundled corpus ("austen" or "kjv"), one string per file."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r} (choose from {sorted(CORPORA)})")
    split = _corpus_split(corpus, split, corpus)
    return [lzma.decompress(f.read_bytes()).decode("utf-8") for f in _corpus_files(corpus, split)]


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps([FORMAT, VERSION, *parts]).encode()).hexdigest()


def _is_current(path: Path, fingerprint: str) -> bool:
    try:
        return read_header(path).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def _file_stats(paths: list[Path]) -> list:
    files = []
    for p in paths:
        files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def dataset_path(
    name_or_path: str | os.PathLike,
    split: str | None = None,
    *,
    tokenizer: str | Tokenizer | None = None,
    text_field: str = "text",
) -> Path:
    """A prepared token file for a named dataset or a path, prepared into the cache if need be.

    Names: `austen-char`, `austen-gpt2` (splits train, valid), `kjv-char`, `kjv-gpt2` (split
    test), `austen-oracle` (characters sampled from the bundled Markov source `austen_oracle`:
    train 8.4 M, valid and test 0.5 M each); split None means train, or the only split. A path: a prepared token file (or its
    .json) is used as it is; raw text (anything `prepare` reads) is prepared with `tokenizer`
    into the cache, keyed by the files' names, sizes and times, and reused while they stay put.
    A path is a single split: split may be None or "train" (any split of a Hugging Face
    DatasetDict folder), and anything else is an error.
    """
    name = str(name_or_path)
    if name == "austen-oracle":
        if tokenizer is not None and load_tokenizer(tokenizer).name != "char":
            raise ValueError(f"dataset {name!r} is tokenized with 'char', not {tokenizer!r}")
        return _oracle_path(name, split)
    if name in NAMED_DATASETS:
        corpus, tok_name = NAMED_DATASETS[name]
        if tokenizer is not None and load_tokenizer(tokenizer).name != tok_name:
            raise ValueError(f"dataset {name!r} is tokenized with {tok_name!r}, not {tokenizer!r}")
        split = _corpus_split(corpus, split, name)
        files = _corpus_files(corpus, split)
        fp = _fingerprint(
            name, split, [[f.name, hashlib.sha256(f.read_bytes()).hexdigest()] for f in files]
        )
        out = cache_dir() / name / f"{split}.bin"
        if not _is_current(out, fp):
            with contextlib.ExitStack() as stack:
                paths = [stack.enter_context(resources.as_file(f)) for f in files]
                extra = {"dataset": name, "split": split, "fingerprint": fp}
                prepare(paths, tok_name, out, extra=extra)
        return out

    path = Path(name_or_path).expanduser()
    if not path.exists():
        if not path.suffix and os.sep not in name:
            raise ValueError(
                f"unknown dataset {name!r}: not one of {sorted(NAMED_DATASETS)} and not a path"
            )
        raise FileNotFoundError(f"dataset path not found: {path}")
    if not is_hf_dataset(path):
        # A file (or folder of files) is one split; calling it "train" is fine, but asking it for
        # "valid" must not quietly hand back the training data.
        if split not in (None, "train"):
            raise ValueError(
                f"split {split!r} asked of {path}, which has no splits: pass that split's own "
                "file (only named datasets and Hugging Face dataset folders have splits)"
            )
        split = None
    if is_prepared(path):
        header = read_header(path)
        if tokenizer is not None and load_tokenizer(tokenizer).name != header["tokenizer"]:
            raise ValueError(f"{path} is tokenized with {header['tokenizer']!r}, not {tokenizer!r}")
        return path if not path.name.endswith(".json") else path.with_name(path.stem)
    if tokenizer is None:
        raise ValueError(f"raw text {path} needs a tokenizer (tokenizer='char', 'gpt2', ...)")
    tok = load_tokenizer(tokenizer)
    inputs = expand_inputs(path)
    fp = _fingerprint(_file_stats(inputs), tok.name, text_field, split)
    out = cache_dir() / "files" / f"{path.name}-{fp[:16]}.bin"
    if not _is_current(out, fp):
        extra = {"split": split, "fingerprint": fp}
        prepare(path, tok, out, text_field=text_field, split=split, extra=extra)
    return out
