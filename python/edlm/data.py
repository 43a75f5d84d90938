"""Token data: raw text -> a memory-mapped token file (`prepare`) -> fixed-size blocks in a seeded,
rank-sharded order (`PackedDataset`, MDLM's BOS/EOS "wrap" for BPE). Named datasets (`austen-char`,
`kjv-gpt2`, ...) are prepared from the bundled corpora on first use into $EDLM_CACHE.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import lzma
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import IO

import numpy as np
import torch

from .tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "NAMED_DATASETS",
    "PackedDataset",
    "block_order",
    "cache_dir",
    "corpus_documents",
    "dataset_path",
    "load_dataset",
    "prepare",
    "read_header",
]

FORMAT = "edlm-tokens"
VERSION = 1
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl",)
COMPRESSED = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}

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


# --- reading text ----------------------------------------------------------------------------


def _suffixes(path: Path) -> tuple[str, str | None]:
    """(content suffix, compression suffix): data.txt.xz -> (".txt", ".xz")."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        return (suffixes[-2] if len(suffixes) > 1 else ""), suffixes[-1]
    return (suffixes[-1] if suffixes else ""), None


def _open_text(path: Path) -> IO[str]:
    _, compression = _suffixes(path)
    opener = COMPRESSED.get(compression, open)
    return opener(path, "rt", encoding="utf-8")


def _is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and any(
        (path / f).exists() for f in ("dataset_dict.json", "state.json", "dataset_info.json")
    )


def _expand(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Input paths, folders of .txt/.jsonl files expanded (sorted, so the order is stable)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ValueError("prepare: no inputs given")
    paths = []
    for p in map(Path, inputs):
        if not p.exists():
            raise FileNotFoundError(f"input not found: {p}")
        if p.is_dir() and not _is_hf_dataset(p):
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and _suffixes(f)[0] in TEXT_SUFFIXES + JSONL_SUFFIXES
            )
            if not found:
                raise ValueError(
                    f"no .txt/.jsonl files (and no Hugging Face dataset) in folder: {p}"
                )
            paths.extend(found)
        else:
            paths.append(p)
    return paths


def _read_txt(path: Path, chunk_chars: int) -> Iterator[Iterator[str]]:
    """A .txt file is one document, read in pieces so that a huge file is never whole in memory."""

    def pieces():
        with _open_text(path) as f:
            while piece := f.read(chunk_chars):
                yield piece

    yield pieces()


def _read_jsonl(path: Path, text_field: str) -> Iterator[Iterator[str]]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or text_field not in row:
                keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise ValueError(f"{path}:{lineno}: no text field {text_field!r} (found {keys})")
            if not isinstance(row[text_field], str):
                raise TypeError(f"{path}:{lineno}: field {text_field!r} is not a string")
            yield iter((row[text_field],))


def _read_hf(path: Path, text_field: str, split: str | None) -> Iterator[Iterator[str]]:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"edlm: reading the Hugging Face dataset folder {path} needs `datasets`: "
            "pip install datasets"
        ) from e
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        name = split or "train"
        if name not in ds:
            raise ValueError(f"split {name!r} not in {path} (it has {sorted(ds)})")
        ds = ds[name]
    elif split is not None:
        raise ValueError(f"split {split!r} given, but {path} holds one dataset with no splits")
    if text_field not in ds.column_names:
        raise ValueError(f"no text field {text_field!r} in {path} (columns: {ds.column_names})")
    for batch in ds.select_columns([text_field]).iter(batch_size=1024):
        for text in batch[text_field]:
            yield iter((text or "",))


def _documents(path: Path, text_field: str, split: str | None, chunk_chars: int):
    kind, _ = _suffixes(path)
    if _is_hf_dataset(path):
        return _read_hf(path, text_field, split)
    if split is not None:
        raise ValueError(f"split {split!r} applies only to named and Hugging Face datasets: {path}")
    if kind in JSONL_SUFFIXES:
        return _read_jsonl(path, text_field)
    if kind in TEXT_SUFFIXES:
        return _read_txt(path, chunk_chars)
    raise ValueError(
        f"unsupported input file type {path.suffix!r}: {path} (expected .txt, .text, .md or "
        ".jsonl, optionally .xz/.gz/.bz2-compressed, or a Hugging Face `save_to_disk` folder)"
    )


# --- tokenizing a stream ---------------------------------------------------------------------


def _safe_cut(buf: str, limit: int) -> int:
    """Index of the last space before `limit` that has an ASCII letter on both sides, or -1.

    Cutting the text just before such a space and tokenizing the two halves apart gives the same
    tokens as tokenizing the whole, for GPT-2's pre-tokenizer (the space belongs to the word after
    it) and for text8 normalization (letters are kept as they are), so the streaming is exact.
    """
    i = buf.rfind(" ", 0, limit)
    while i > 0:
        if i + 1 < len(buf) and _ascii_letter(buf[i - 1]) and _ascii_letter(buf[i + 1]):
            return i
        i = buf.rfind(" ", 0, i)
    return -1


def _ascii_letter(c: str) -> bool:
    return "a" <= c <= "z" or "A" <= c <= "Z"


def _encode_stream(pieces: Iterable[str], tok: Tokenizer, chunk_chars: int) -> Iterator[list[int]]:
    """Token ids of the concatenated pieces, tokenized chunk by chunk at exact cut points."""
    buf = ""
    for piece in pieces:
        buf += piece
        while len(buf) > chunk_chars:
            cut = _safe_cut(buf, chunk_chars)
            if cut <= 0:
                if len(buf) < 4 * chunk_chars:
                    break  # read on: a cut point is probably just ahead
                # No ASCII word boundary in 4 chunks (e.g. text without Latin letters): cut
                # at a plain space, else anywhere; tokens at this one seam may differ slightly.
                cut = buf.rfind(" ", 1, chunk_chars)
                cut = cut if cut > 0 else chunk_chars
            yield tok.encode(buf[:cut])
            buf = buf[cut:]
    if buf:
        yield tok.encode(buf)


def _has_words(text: str) -> bool:
    return any(c.isalnum() for c in text)


class _TokenWriter:
    """Appends token arrays to an open binary file, in the dtype the vocabulary needs."""

    def __init__(self, f: IO[bytes], dtype: np.dtype, vocab_size: int) -> None:
        self.f, self.dtype, self.vocab_size = f, dtype, vocab_size
        self.count, self.pending, self.pending_len = 0, [], 0

    def add(self, ids: list[int]) -> None:
        if ids:
            self.pending.append(np.asarray(ids, dtype=np.int64))
            self.pending_len += len(ids)
            if self.pending_len >= 1 << 20:
                self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        arr = np.concatenate(self.pending)
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            bad = int(arr[(arr < 0) | (arr >= self.vocab_size)][0])
            raise ValueError(
                f"tokenizer produced id {bad}, outside its vocab_size {self.vocab_size}"
            )
        self.f.write(arr.astype(self.dtype).tobytes())
        self.count += len(arr)
        self.pending, self.pending_len = [], 0


def prepare(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer: str | Tokenizer,
    out_path: str | os.PathLike,
    *,
    text_field: str = "text",
    split: str | None = None,
    wrap: bool | None = None,
    block_size: int | None = None,
    chunk_chars: int = 1 << 20,
    extra: dict | None = None,
) -> dict:
    """Tokenize text into `out_path` (flat tokens) and `out_path + ".json"` (the header).

    inputs: .txt/.text/.md files (each file is one document), .jsonl files (one document per line,
        in field `text_field`), folders of such files, or a Hugging Face `save_to_disk` folder
        (`split` picks from a DatasetDict; `datasets` needed). .xz/.gz/.bz2 are read as they are.
    wrap: documents become [BOS] doc [EOS] in the stream (the BOS left out when it is the same
        token as EOS, as GPT-2's <|endoftext|> is, which makes the stream MDLM's doc EOS doc EOS).
        Default: when the tokenizer has both. Without wrap, documents are joined by a blank line
        of text (a single space for text8).
    block_size: the default block length stored for `PackedDataset` (256 for char, else 1024).

    Text is read and tokenized in pieces of about `chunk_chars` characters, cut where that does
    not change the tokens, so no input ever has to fit in memory. Tokens are uint16 when the
    vocabulary (mask included) fits, else uint32. Both files are written under temporary names
    and moved into place with os.replace, so a reader never sees a half-written file.
    Returns the header.
    """
    tok = load_tokenizer(tokenizer)
    paths = _expand(inputs)
    if wrap is None:
        wrap = tok.bos_id is not None and tok.eos_id is not None
    elif wrap and (tok.bos_id is None or tok.eos_id is None):
        raise ValueError(f"wrap=True needs BOS and EOS tokens; tokenizer {tok.name!r} has none")
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype.name,
        "count": 0,
        "documents": 0,
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "mask_id": tok.mask_id,
        "bos_id": tok.bos_id if wrap else None,
        "eos_id": tok.eos_id if wrap else None,
        "wrap": bool(wrap),
        "block_size": block_size or (256 if tok.name == "char" else 1024),
        "sources": [str(p) for p in paths],
        **(extra or {}),
    }

    tmp_bin, tmp_json = _temp_path(out_path), _temp_path(out_path)
    try:
        with open(tmp_bin, "wb") as f:
            writer = _TokenWriter(f, dtype, tok.vocab_size)
            for path in paths:
                header["documents"] += _write_source(
                    path, tok, writer, wrap, text_field, split, chunk_chars
                )
            writer.flush()
        header["count"] = writer.count
        Path(tmp_json).write_text(json.dumps(header, indent=1) + "\n")
        # Tokens first, header last: a header whose count disagrees with the file's size (two
        # writers racing) is caught by read_header.
        os.replace(tmp_bin, out_path)
        os.replace(tmp_json, _header_path(out_path))
    finally:
        for tmp in (tmp_bin, tmp_json):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return header


def _write_source(path, tok, writer, wrap, text_field, split, chunk_chars) -> int:
    """Streams one input into `writer`; returns its number of documents."""
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"empty file: {path}")
    stats = {"words": False, "chars": 0}

    def watched(pieces):
        for piece in pieces:
            stats["chars"] += len(piece.strip())
            stats["words"] = stats["words"] or _has_words(piece)
            yield piece

    documents = 0
    if wrap:
        lead = [] if tok.bos_id == tok.eos_id else [tok.bos_id]
        for doc in _documents(path, text_field, split, chunk_chars):
            started = False
            for ids in _encode_stream(watched(doc), tok, chunk_chars):
                if ids and not started:
                    writer.add(lead)
                    started = True
                writer.add(ids)
            if started:  # an empty document leaves no [BOS][EOS] pair behind
                writer.add([tok.eos_id])
                documents += 1
    else:
        # One text stream with a blank line between documents, so that words never fuse (text8
        # normalization turns it into a single space).
        def stream():
            nonlocal documents
            if writer.count or writer.pending_len:  # a later source: separate it as well
                yield "\n\n"
            for doc in _documents(path, text_field, split, chunk_chars):
                if documents:
                    yield "\n\n"
                documents += 1
                yield from watched(doc)

        for ids in _encode_stream(stream(), tok, chunk_chars):
            writer.add(ids)
    if stats["chars"] == 0:
        raise ValueError(f"no text (only whitespace or empty documents) in: {path}")
    if not stats["words"]:
        raise ValueError(f"no usable text (not one letter or digit) in: {path}")
    return documents


def _temp_path(path: Path) -> str:
    """A fresh file beside `path` (same file system, so os.replace is atomic)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp makes it private; the cache is meant to be shared
    return name


def _header_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_header(path: str | os.PathLike) -> dict:
    """The header of a prepared token file (given the token file or its .json sidecar)."""
    path = Path(path)
    if path.name.endswith(".json") and path.with_name(path.name[: -len(".json")]).exists():
        path = path.with_name(path.name[: -len(".json")])
    if not path.exists():
        raise FileNotFoundError(f"token file not found: {path}")
    hpath = _header_path(path)
    if not hpath.exists():
        raise ValueError(f"not a prepared token file (no {hpath.name} beside it): {path}")
    header = json.loads(hpath.read_text())
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise ValueError(f"not an {FORMAT} v{VERSION} header: {hpath}")
    expected = header["count"] * np.dtype(header["dtype"]).itemsize
    if path.stat().st_size != expected:
        raise ValueError(
            f"token file {path} has {path.stat().st_size} bytes, its header says {expected}: "
            "truncated or mismatched; delete both files and prepare again"
        )
    return header


# --- blocks ----------------------------------------------------------------------------------

_U64 = np.uint64


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on uint64 arrays: a bijection, so keys never tie."""
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def block_order(num_blocks: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(num_blocks) that depends only on (seed, epoch).

    Plain uint64 arithmetic and a sort rather than a library RNG, whose streams may change between
    numpy versions: a run resumed elsewhere still sees the same data order.
    """
    with np.errstate(over="ignore"):
        key = _splitmix64(np.array([seed % (1 << 64)], dtype=_U64))
        key = _splitmix64(key ^ np.array([epoch % (1 << 64)], dtype=_U64))
        keys = _splitmix64(np.arange(num_blocks, dtype=_U64) + key)
    return np.argsort(keys, kind="stable")


class PackedDataset(torch.utils.data.Dataset):
    """Fixed-length blocks of a prepared token file, in a seeded order, sharded across ranks.

    Block j holds tokens [j*S, (j+1)*S) of the stream, S = L - 2 with wrap (then [BOS] + those
    S tokens + [EOS], as MDLM's `wrap` does), else S = L; the tail shorter than S is dropped.
    Items are int64 tensors [L].

    Order: epoch e visits `block_order(num_blocks, seed, e)` (or 0, 1, ... with shuffle=False);
    rank r of W takes every W-th block of it, from the r-th, so the ranks together cover every
    block exactly once per epoch. With drop_last=True the order is first cut to a multiple of W,
    so every rank has the same length (what DDP with a DataLoader needs). `set_epoch` picks the
    epoch for indexing; `batches` walks epoch after epoch by itself and can start anywhere,
    which is how a training run resumes with the same data order.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        block_size: int | None = None,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.path = Path(path)
        self.header = read_header(self.path)
        self.block_size = int(block_size or self.header["block_size"])
        self.wrap = bool(self.header["wrap"])
        self.stride = self.block_size - 2 if self.wrap else self.block_size
        if self.stride < 1:
            raise ValueError(f"block_size {self.block_size} leaves no room for text (wrap adds 2)")
        self.num_blocks = self.header["count"] // self.stride
        if self.num_blocks == 0:
            raise ValueError(
                f"{self.path} holds {self.header['count']} tokens, fewer than one block of "
                f"{self.block_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self._orders: dict[int, np.ndarray] = {}
        self._tokens: np.memmap | None = None

    @property
    def tokens(self) -> np.memmap:
        """The whole token stream, memory-mapped (opened lazily, so workers each open their own)."""
        if self._tokens is None:
            self._tokens = np.memmap(
                self.path, dtype=self.header["dtype"], mode="r", shape=(self.header["count"],)
            )
        return self._tokens

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None, "_orders": {}}

    def _kept(self) -> int:
        n = self.num_blocks
        return n - n % self.world_size if self.drop_last else n

    def __len__(self) -> int:
        return len(range(self.rank, self._kept(), self.world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """Global block ids this rank visits in `epoch` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else int(epoch)
        if epoch not in self._orders:
            if self.shuffle:
                order = block_order(self.num_blocks, self.seed, epoch)
            else:
                order = np.arange(self.num_blocks)
            self._orders = {epoch: order[: self._kept()][self.rank :: self.world_size]}
        return self._orders[epoch]

    def blocks(self, ids: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Blocks by global id: int64 [len(ids), L]."""
        rows = self.tokens[: self.num_blocks * self.stride].reshape(self.num_blocks, self.stride)
        out = torch.from_numpy(rows[np.asarray(ids, dtype=np.int64)].astype(np.int64))  # [B, S]
        if self.wrap:
            bos = torch.full((out.shape[0], 1), self.header["bos_id"], dtype=torch.int64)
            eos = torch.full((out.shape[0], 1), self.header["eos_id"], dtype=torch.int64)
            out = torch.cat([bos, out, eos], dim=1)  # [B, L]
        return out

    def __getitem__(self, i: int) -> torch.Tensor:
        idx = self.indices()
        if not -len(idx) <= i < len(idx):
            raise IndexError(f"index {i} out of range for {len(idx)} blocks")
        return self.blocks([idx[i]])[0]

    def batches(self, batch_size: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Endless int64 batches [batch_size, L]: this rank's blocks of epoch 0, 1, 2, ...

        Batch k holds items k*B .. (k+1)*B - 1 of that endless sequence, so a run resumed after
        k batches passes start=k and gets the very batches it would have had. A batch may span
        the end of one epoch and the start of the next.
        """
        n = len(self)
        if n == 0:
            raise ValueError(f"rank {self.rank} has no blocks ({self.num_blocks} in all)")
        if batch_size < 1 or start < 0:
            raise ValueError(f"batch_size must be >= 1 and start >= 0, got {batch_size}, {start}")
        pos = start * batch_size
        while True:
            ids = []
            while len(ids) < batch_size:
                epoch, offset = divmod(pos, n)
                take = self.indices(epoch)[offset : offset + batch_size - len(ids)]
                ids.extend(take.tolist())
                pos += len(take)
            yield self.blocks(ids)

    def __repr__(self) -> str:
        return (
            f"PackedDataset({str(self.path)!r}, block_size={self.block_size}, "
            f"blocks={self.num_blocks}, tokenizer={self.header['tokenizer']!r}, "
            f"rank={self.rank}/{self.world_size}, seed={self.seed}, shuffle={self.shuffle})"
        )


# --- named datasets and the cache ------------------------------------------------------------


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


def _is_prepared(path: Path) -> bool:
    return _header_path(path).exists() or (
        path.name.endswith(".json") and path.with_name(path.name[: -len(".json")]).exists()
    )


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
    test); split None means train, or the only split. A path: a prepared token file (or its
    .json) is used as it is; raw text (anything `prepare` reads) is prepared with `tokenizer`
    into the cache, keyed by the files' names, sizes and times, and reused while they stay put.
    A path is a single split: split may be None or "train" (any split of a Hugging Face
    DatasetDict folder), and anything else is an error.
    """
    name = str(name_or_path)
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
    if not _is_hf_dataset(path):
        # A file (or folder of files) is one split; calling it "train" is fine, but asking it for
        # "valid" must not quietly hand back the training data.
        if split not in (None, "train"):
            raise ValueError(
                f"split {split!r} asked of {path}, which has no splits: pass that split's own "
                "file (only named datasets and Hugging Face dataset folders have splits)"
            )
        split = None
    if _is_prepared(path):
        header = read_header(path)
        if tokenizer is not None and load_tokenizer(tokenizer).name != header["tokenizer"]:
            raise ValueError(f"{path} is tokenized with {header['tokenizer']!r}, not {tokenizer!r}")
        return path if not path.name.endswith(".json") else path.with_name(path.stem)
    if tokenizer is None:
        raise ValueError(f"raw text {path} needs a tokenizer (tokenizer='char', 'gpt2', ...)")
    tok = load_tokenizer(tokenizer)
    inputs = _expand(path)
    fp = _fingerprint(_file_stats(inputs), tok.name, text_field, split)
    out = cache_dir() / "files" / f"{path.name}-{fp[:16]}.bin"
    if not _is_current(out, fp):
        extra = {"split": split, "fingerprint": fp}
        prepare(path, tok, out, text_field=text_field, split=split, extra=extra)
    return out


def load_dataset(
    name_or_path: str | os.PathLike,
    split: str | None = None,
    *,
    tokenizer: str | Tokenizer | None = None,
    block_size: int | None = None,
    seed: int = 0,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    text_field: str = "text",
) -> PackedDataset:
    """`dataset_path` (preparing on first use), then a `PackedDataset` over it."""
    path = dataset_path(name_or_path, split, tokenizer=tokenizer, text_field=text_field)
    return PackedDataset(
        path,
        block_size,
        seed=seed,
        shuffle=shuffle,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
    )
