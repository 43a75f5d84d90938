"""Tokenizers, each with one extra id for the diffusion mask (EDLM.md section 1): text8 characters
(`char`, 28 ids), GPT-2 BPE from a bundled ranks file via tiktoken, offline (`gpt2`, 50258 ids), and
local Hugging Face tokenizers; `load_tokenizer` picks one by name or path.
"""

from __future__ import annotations

import base64
import functools
import lzma
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = [
    "CharTokenizer",
    "GPT2Tokenizer",
    "HFTokenizer",
    "Tokenizer",
    "encode_template",
    "load_tokenizer",
    "normalize_text8",
]


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of edlm needs from a tokenizer.

    `vocab_size` counts the mask; `mask_id` is the mask's id (the last id, except for a Hugging
    Face tokenizer that has a mask token of its own). `bos_id`/`eos_id` are None where the
    vocabulary has no such token. `name` is what `load_tokenizer` takes to build it again.
    """

    name: str
    vocab_size: int
    mask_id: int
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


# --- characters (text8) ----------------------------------------------------------------------

_DIGITS = str.maketrans(
    {
        str(d): f" {w} "
        for d, w in enumerate(
            ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
        )
    }
)
_NON_LETTERS = re.compile(r"[^a-z]+")
_CHAR_IDS = bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz ", bytes(range(27)))


def normalize_text8(text: str) -> str:
    """Text the way text8 has it: lowercase a-z, digits spelled out, every other run -> one space.

    Spelling digits follows Matt Mahoney's wikifil.pl, which made text8, so "1818" becomes
    " one eight one eight ". Runs are not stripped at the ends, so that normalizing two pieces of a
    text cut at a space between letters gives the same result as normalizing the whole.
    """
    return _NON_LETTERS.sub(" ", text.lower().translate(_DIGITS))


class CharTokenizer:
    """text8 characters: ids 0-25 are a-z, 26 is space, 27 is the mask (decoded as "_")."""

    name = "char"
    alphabet = "abcdefghijklmnopqrstuvwxyz "
    vocab_size = 28
    mask_id = 27
    bos_id = None
    eos_id = None
    space_id = 26

    def __init__(self) -> None:
        self._decode_table = self.alphabet + "_"

    def encode(self, text: str) -> list[int]:
        # After normalization every character is a-z or space: one byte each, mapped in C.
        return list(normalize_text8(text).encode("ascii").translate(_CHAR_IDS))

    def decode(self, ids: Sequence[int]) -> str:
        ids = _checked(self, ids)
        return "".join(self._decode_table[i] for i in ids)

    def __repr__(self) -> str:
        return "CharTokenizer(vocab_size=28, mask_id=27)"


def _checked(tok: Tokenizer, ids: Sequence[int]) -> list[int]:
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise ValueError(f"{tok.name}: token id {bad[0]} is out of range [0, {tok.vocab_size})")
    return ids


# --- GPT-2 BPE (tiktoken, offline) -----------------------------------------------------------

# GPT-2's pre-tokenizer (tiktoken's r50k_pat_str, the regex of openai/gpt-2 encoder.py).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_RANKS = "gpt2.tiktoken.xz"  # in edlm/assets; see assets/NOTICE.md


@functools.lru_cache(maxsize=1)
def _gpt2_encoding():
    try:
        import tiktoken
    except ImportError as e:
        raise ImportError("edlm: the gpt2 tokenizer needs `tiktoken`: pip install tiktoken") from e
    raw = lzma.decompress((resources.files("edlm") / "assets" / GPT2_RANKS).read_bytes())
    # Same format and parsing as tiktoken.load.load_tiktoken_bpe, which would also copy the file
    # into a cache folder; reading it here keeps loading free of side effects.
    ranks = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != 50256:
        raise RuntimeError(f"edlm: {GPT2_RANKS} holds {len(ranks)} ranks, expected 50256")
    return tiktoken.Encoding(
        name="gpt2-edlm",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        # The mask is registered as a special token so that decode() can print it; encode never
        # produces it (encode_ordinary treats special-token text as plain text).
        special_tokens={"<|endoftext|>": 50256, "<|mask|>": 50257},
        explicit_n_vocab=50258,
    )


class GPT2Tokenizer:
    """GPT-2 BPE: ids 0-50255 merged bytes, 50256 <|endoftext|> (BOS and EOS), 50257 the mask."""

    name = "gpt2"
    vocab_size = 50258
    mask_id = 50257
    bos_id = 50256
    eos_id = 50256

    def __init__(self) -> None:
        self._enc = _gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        # Ordinary: "<|endoftext|>" inside web text is text, not a document boundary.
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        ids = _checked(self, ids)
        return self._enc.decode(ids)

    def __repr__(self) -> str:
        return "GPT2Tokenizer(vocab_size=50258, mask_id=50257)"


# --- Hugging Face (local only) ---------------------------------------------------------------


class HFTokenizer:
    """A Hugging Face tokenizer from a local folder or the local HF cache; nothing is downloaded.

    The mask is the tokenizer's own mask token when it has one, else a new id len(tokenizer).
    BOS/EOS fall back to CLS/SEP for BERT-like vocabularies.
    """

    def __init__(self, name_or_path: str | os.PathLike) -> None:
        path = Path(name_or_path).expanduser()
        try:
            from transformers import AutoTokenizer
        except ImportError as e:
            if not path.exists():  # most likely a typo rather than a missing package
                raise ValueError(
                    f"unknown tokenizer {str(name_or_path)!r}: expected 'char', 'gpt2', or a "
                    "local Hugging Face tokenizer folder or cached name (needs `transformers`)"
                ) from e
            raise ImportError(
                f"edlm: loading the Hugging Face tokenizer {str(name_or_path)!r} needs "
                "`transformers`: pip install transformers"
            ) from e
        self.name = str(path.resolve()) if path.exists() else str(name_or_path)
        try:
            self.hf = AutoTokenizer.from_pretrained(self.name, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"unknown tokenizer {str(name_or_path)!r}: not 'char' or 'gpt2', and not a "
                f"Hugging Face tokenizer in a local folder or the local cache (edlm never "
                f"downloads): {e}"
            ) from e
        own_mask = self.hf.mask_token_id
        self.mask_id = own_mask if own_mask is not None else len(self.hf)
        self.vocab_size = max(len(self.hf), self.mask_id + 1)
        self.bos_id = _first_id(self.hf.bos_token_id, self.hf.cls_token_id)
        self.eos_id = _first_id(self.hf.eos_token_id, self.hf.sep_token_id)
        self._mask_text = self.hf.mask_token if own_mask is not None else "<|mask|>"

    def encode(self, text: str) -> list[int]:
        # verbose=False: documents longer than the model's context are expected here.
        return self.hf.encode(text, add_special_tokens=False, verbose=False)

    def decode(self, ids: Sequence[int]) -> str:
        ids = _checked(self, ids)
        if self.mask_id < len(self.hf):
            return self.hf.decode(ids)
        # The added mask id is unknown to the HF tokenizer: decode the runs between masks.
        parts, run = [], []
        for i in ids + [self.mask_id]:
            if i == self.mask_id:
                parts.append(self.hf.decode(run) if run else "")
                run = []
            else:
                run.append(i)
        return self._mask_text.join(parts)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size}, mask_id={self.mask_id})"


def _first_id(*ids: int | None) -> int | None:
    return next((i for i in ids if i is not None), None)


BUILTIN = {"char": CharTokenizer, "gpt2": GPT2Tokenizer}


def load_tokenizer(name_or_path: str | os.PathLike | Tokenizer) -> Tokenizer:
    """'char', 'gpt2', a local Hugging Face tokenizer folder, or a name in the local HF cache.

    A tokenizer object is returned as it is, so callers can take either.
    """
    if isinstance(name_or_path, Tokenizer):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
        raise ValueError(f"unknown tokenizer {name_or_path!r}: expected 'char', 'gpt2' or a path")
    if str(name_or_path) in BUILTIN:
        return BUILTIN[str(name_or_path)]()
    return HFTokenizer(name_or_path)


# --- templates (infilling) -------------------------------------------------------------------

_MASK_RUN = re.compile(r"<mask:(\d+)>")


def encode_template(tok: Tokenizer, template: str, marker: str = "_") -> list[int | None]:
    """The ids of a fill-in template, None where a token is to be generated.

    Each `marker` character is one generated token (for the character tokenizer, whose tokens are
    characters), and `<mask:N>` is N generated tokens with any tokenizer (the form to use with
    BPE, where a character is not a token). The text between them is encoded piece by piece, so
    a piece keeps its own tokens whatever is generated next to it.
    """
    if len(marker) != 1 or marker.isspace():
        raise ValueError(f"template: the marker must be one visible character, got {marker!r}")
    pieces: list[int | None] = []
    text_start = 0
    pattern = re.compile(_MASK_RUN.pattern + "|" + re.escape(marker) + "+")
    for m in pattern.finditer(template):
        if m.start() > text_start:
            pieces += tok.encode(template[text_start : m.start()])
        count = int(m.group(1)) if m.group(1) is not None else len(m.group(0))
        pieces += [None] * count
        text_start = m.end()
    if text_start < len(template):
        pieces += tok.encode(template[text_start:])
    return pieces
