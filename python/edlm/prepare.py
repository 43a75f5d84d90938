"""Preparing token data: raw text (.txt/.jsonl, compressed or not, folders, Hugging Face dataset
folders) -> a flat memory-mapped token file with a JSON header (`prepare`, `read_header`).
Tokenization streams through the input in exact cut points, so no input has to fit in memory.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import lzma
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from .tokenizer import Tokenizer, load_tokenizer

__all__ = ["FORMAT", "VERSION", "is_prepared", "prepare", "read_header", "write_tokens"]

FORMAT = "edlm-tokens"
VERSION = 1
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl",)
COMPRESSED = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}


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


def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and any(
        (path / f).exists() for f in ("dataset_dict.json", "state.json", "dataset_info.json")
    )


def expand_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Input paths, folders of .txt/.jsonl files expanded (sorted, so the order is stable)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ValueError("prepare: no inputs given")
    paths = []
    for p in map(Path, inputs):
        if not p.exists():
            raise FileNotFoundError(f"input not found: {p}")
        if p.is_dir() and not is_hf_dataset(p):
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
    if is_hf_dataset(path):
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

    def add(self, ids) -> None:
        if len(ids):
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
    paths = expand_inputs(inputs)
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


def write_tokens(
    chunks: Iterable[np.ndarray],
    tokenizer: str | Tokenizer,
    out_path: str | os.PathLike,
    *,
    block_size: int | None = None,
    extra: dict | None = None,
) -> dict:
    """Writes token arrays (already ids of `tokenizer`, one unwrapped stream) as a prepared token
    file with its header, atomically as `prepare` does; for generated data (`austen-oracle`).
    Returns the header."""
    tok = load_tokenizer(tokenizer)
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
        "bos_id": None,
        "eos_id": None,
        "wrap": False,
        "block_size": block_size or (256 if tok.name == "char" else 1024),
        "sources": [],
        **(extra or {}),
    }
    tmp_bin, tmp_json = _temp_path(out_path), _temp_path(out_path)
    try:
        with open(tmp_bin, "wb") as f:
            writer = _TokenWriter(f, dtype, tok.vocab_size)
            for chunk in chunks:
                writer.add(np.asarray(chunk).reshape(-1))
                header["documents"] += 1
            writer.flush()
        header["count"] = writer.count
        Path(tmp_json).write_text(json.dumps(header, indent=1) + "\n")
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


def is_prepared(path: Path) -> bool:
    """Whether `path` is a prepared token file (or its .json header), rather than raw text."""
    path = Path(path)
    return _header_path(path).exists() or (
        path.name.endswith(".json") and path.with_name(path.name[: -len(".json")]).exists()
    )
