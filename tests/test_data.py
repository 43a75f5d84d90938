"""Tests of edlm.data: prepare -> memmap -> PackedDataset, MDLM wrapping, order, sharding and
resume, the named datasets and their cache, and the error for each kind of bad input.
"""

import itertools
import json
import lzma
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from edlm import corpora
from edlm.corpora import dataset_path
from edlm.data import PackedDataset, block_order, load_dataset
from edlm.prepare import prepare, read_header
from edlm.tokenizer import CharTokenizer, GPT2Tokenizer, normalize_text8


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def persuasion():
    return corpora.corpus_documents("austen", "valid")[0]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def tokens_of(path):
    header = read_header(path)
    return np.fromfile(path, dtype=header["dtype"]).astype(np.int64)


# ---------------------------------------------------------------- prepare and read back


def test_char_prepare_memmap_blocks_round_trip(tmp_path, persuasion):
    text = persuasion[:20_000]
    out = tmp_path / "p.bin"
    header = prepare(write(tmp_path / "p.txt", text), "char", out)
    expected = CharTokenizer().encode(text)
    assert header["dtype"] == "uint16" and header["count"] == len(expected)
    assert (header["tokenizer"], header["block_size"], header["wrap"]) == ("char", 256, False)
    assert read_header(out) == header == read_header(str(out) + ".json")
    assert tokens_of(out).tolist() == expected

    ds = PackedDataset(out, shuffle=False)
    assert ds.num_blocks == len(expected) // 256 == len(ds)
    item = ds[0]
    assert item.shape == (256,) and item.dtype == torch.int64
    stream = torch.cat([ds[i] for i in range(len(ds))])
    assert stream.tolist() == expected[: len(ds) * 256]
    assert CharTokenizer().decode(ds[0].tolist()) == normalize_text8(text)[:256]


def test_gpt2_documents_are_wrapped_like_mdlm(tmp_path):
    tok = GPT2Tokenizer()
    docs = ["The first document is about Emma.", "A second one, about Anne Elliot!"]
    src = write(tmp_path / "d.jsonl", "".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "d.bin"
    header = prepare(src, "gpt2", out)
    assert header["documents"] == 2 and header["wrap"] and header["block_size"] == 1024
    # BOS == EOS for GPT-2, so the stream is doc EOS doc EOS (MDLM), not EOS BOS between.
    stream = tok.encode(docs[0]) + [50256] + tok.encode(docs[1]) + [50256]
    assert tokens_of(out).tolist() == stream

    ds = PackedDataset(out, block_size=6, shuffle=False)  # [BOS] + 4 tokens + [EOS]
    assert ds.num_blocks == len(stream) // 4
    for j in range(ds.num_blocks):
        block = ds[j].tolist()
        assert block[0] == 50256 and block[-1] == 50256 and len(block) == 6
        assert block[1:-1] == stream[4 * j : 4 * j + 4]


def test_distinct_bos_eos_wrap_each_document(tmp_path):
    tok = ToyTokenizer(bos_id=1, eos_id=2)
    src = write(tmp_path / "d.jsonl", '{"text": "ab"}\n{"text": ""}\n{"text": "c"}\n')
    prepare(src, tok, tmp_path / "d.bin")
    # The empty document leaves no [BOS][EOS] pair.
    assert tokens_of(tmp_path / "d.bin").tolist() == [1, 10, 11, 2, 1, 12, 2]


def test_char_documents_and_files_are_joined_by_one_space(tmp_path):
    src = write(tmp_path / "d.jsonl", '{"body": "One."}\n{"body": "Two"}\n')
    other = write(tmp_path / "e.txt", "three")
    prepare([src, other], "char", tmp_path / "d.bin", text_field="body")
    assert CharTokenizer().decode(tokens_of(tmp_path / "d.bin").tolist()) == "one two three"


@pytest.mark.parametrize("name", ["char", "gpt2"])
def test_streaming_in_pieces_gives_the_same_tokens(tmp_path, persuasion, name):
    text = persuasion[:30_000]
    src = write(tmp_path / "p.txt", text)
    prepare(src, name, tmp_path / "small.bin", chunk_chars=700)
    prepare(src, name, tmp_path / "whole.bin", chunk_chars=1 << 30)
    small, whole = tokens_of(tmp_path / "small.bin"), tokens_of(tmp_path / "whole.bin")
    assert np.array_equal(small, whole)
    if name == "gpt2":
        assert whole.tolist() == GPT2Tokenizer().encode(text) + [50256]


def test_compressed_text_and_folders(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "b.txt.xz").write_bytes(lzma.compress(b"second file"))
    write(tmp_path / "in" / "a.txt", "first file")
    write(tmp_path / "in" / "notes.csv", "ignored, not text")
    header = prepare(tmp_path / "in", "char", tmp_path / "f.bin")
    assert [os.path.basename(s) for s in header["sources"]] == ["a.txt", "b.txt.xz"]
    assert (
        CharTokenizer().decode(tokens_of(tmp_path / "f.bin").tolist()) == "first file second file"
    )


def test_uint32_when_the_vocabulary_needs_it(tmp_path):
    tok = ToyTokenizer(vocab_size=70_000, offset=65_600)
    header = prepare(write(tmp_path / "t.txt", "abc"), tok, tmp_path / "t.bin")
    assert header["dtype"] == "uint32"
    assert tokens_of(tmp_path / "t.bin").tolist() == [65_600, 65_601, 65_602]


def test_hf_dataset_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"text": ["Hello world", "Second row"], "id": [1, 2]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "validation": datasets.Dataset.from_dict(
            {"text": ["Only this"], "id": [3]})}
    ).save_to_disk(str(tmp_path / "dict"))  # fmt: skip
    prepare(tmp_path / "one", "gpt2", tmp_path / "one.bin")
    assert tokens_of(tmp_path / "one.bin").tolist()[:3] == [15496, 995, 50256]
    prepare(tmp_path / "dict", "char", tmp_path / "v.bin", split="validation")
    assert CharTokenizer().decode(tokens_of(tmp_path / "v.bin").tolist()) == "only this"
    with pytest.raises(ValueError, match="split 'test' not in"):
        prepare(tmp_path / "dict", "char", tmp_path / "x.bin", split="test")
    with pytest.raises(ValueError, match="no text field 'body'"):
        prepare(tmp_path / "one", "char", tmp_path / "x.bin", text_field="body")


def test_hf_dataset_folder_without_datasets_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "ds").mkdir()
    write(tmp_path / "ds" / "dataset_info.json", "{}")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="needs `datasets`: pip install datasets"):
        prepare(tmp_path / "ds", "char", tmp_path / "o.bin")


# ---------------------------------------------------------------- order, shards, resume


@pytest.fixture
def blocks_file(tmp_path, persuasion):
    out = tmp_path / "b.bin"
    prepare(write(tmp_path / "b.txt", persuasion[:12_000]), "char", out)
    return out


def test_block_order_is_a_seeded_permutation():
    a = block_order(1000, seed=3, epoch=0)
    assert sorted(a.tolist()) == list(range(1000))
    assert np.array_equal(a, block_order(1000, seed=3, epoch=0))
    assert not np.array_equal(a, block_order(1000, seed=4, epoch=0))
    assert not np.array_equal(a, block_order(1000, seed=3, epoch=1))
    # Pinned: the order is defined by arithmetic alone, so it must never change between versions.
    assert block_order(8, seed=0, epoch=0).tolist() == PINNED_ORDER


PINNED_ORDER = [4, 0, 1, 7, 6, 2, 5, 3]


def test_order_is_deterministic_and_shuffle_false_is_sequential(blocks_file):
    a, b = PackedDataset(blocks_file, 32, seed=7), PackedDataset(blocks_file, 32, seed=7)
    assert torch.equal(torch.stack(list(a)), torch.stack(list(b)))
    assert not np.array_equal(a.indices(), PackedDataset(blocks_file, 32, seed=8).indices())
    a.set_epoch(1)
    assert not np.array_equal(a.indices(), b.indices())
    assert PackedDataset(blocks_file, 32, shuffle=False).indices().tolist() == list(
        range(a.num_blocks)
    )


@pytest.mark.parametrize("world_size", [1, 2, 4, 7])
def test_ranks_cover_every_block_exactly_once(blocks_file, world_size):
    shards = [PackedDataset(blocks_file, 32, seed=1, rank=r, world_size=world_size)
              for r in range(world_size)]  # fmt: skip
    n = shards[0].num_blocks
    assert n % world_size != 0 or world_size == 1  # the awkward case is exercised
    ids = np.concatenate([s.indices(epoch=2) for s in shards])
    assert sorted(ids.tolist()) == list(range(n))
    assert sum(len(s) for s in shards) == n
    # Items are the blocks their ids name.
    assert torch.equal(shards[-1][0], shards[0].blocks([shards[-1].indices(epoch=0)[0]])[0])


def test_drop_last_gives_equal_disjoint_shards(blocks_file):
    shards = [
        PackedDataset(blocks_file, 32, rank=r, world_size=4, drop_last=True) for r in range(4)
    ]
    n = shards[0].num_blocks
    assert n % 4 != 0 and {len(s) for s in shards} == {n // 4}
    ids = np.concatenate([s.indices() for s in shards])
    assert len(set(ids.tolist())) == len(ids) == n - n % 4


def test_batches_resume_where_they_stopped_across_epochs(blocks_file):
    ds = PackedDataset(blocks_file, 32, seed=5, rank=1, world_size=2)
    batch = 7
    steps = 2 * len(ds) // batch + 3  # runs into a third epoch
    full = list(itertools.islice(ds.batches(batch), steps))
    assert all(b.shape == (batch, 32) and b.dtype == torch.int64 for b in full)
    resumed = list(itertools.islice(ds.batches(batch, start=steps - 5), 5))
    assert all(torch.equal(x, y) for x, y in zip(full[-5:], resumed))
    # The first epoch's items, in order, are exactly what indexing the dataset gives.
    flat = torch.cat(full)
    assert torch.equal(flat[: len(ds)], torch.stack([ds[i] for i in range(len(ds))]))
    ds.set_epoch(1)
    assert torch.equal(flat[len(ds) : 2 * len(ds)], torch.stack([ds[i] for i in range(len(ds))]))


def test_dataset_pickles_for_dataloader_workers(blocks_file):
    ds = PackedDataset(blocks_file, 32, seed=2)
    ds[0]  # opens the memmap, which must not travel
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._tokens is None and torch.equal(copy[3], ds[3])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    assert torch.equal(next(iter(loader)), torch.stack([ds[i] for i in range(4)]))


# ---------------------------------------------------------------- named datasets and the cache


def test_named_datasets_prepare_once_into_the_cache(cache, monkeypatch):
    ds = load_dataset("austen-char", "valid", shuffle=False)
    path = cache / "austen-char" / "valid.bin"
    assert ds.path == path and ds.block_size == 256
    assert CharTokenizer().decode(ds[0].tolist()).startswith("persuasion by jane austen")
    header = read_header(path)
    assert (header["dataset"], header["split"], header["tokenizer"]) == (
        "austen-char",
        "valid",
        "char",
    )
    assert sorted(os.listdir(path.parent)) == ["valid.bin", "valid.bin.json"]  # no temp files

    def no_prepare(*args, **kwargs):
        raise AssertionError("prepared again")

    monkeypatch.setattr(corpora, "prepare", no_prepare)
    assert dataset_path("austen-char", "valid") == path


def test_kjv_gpt2_is_the_bible(cache):
    ds = load_dataset("kjv-gpt2", shuffle=False)  # its only split, "test"
    assert ds.block_size == 1024 and read_header(ds.path)["split"] == "test"
    text = GPT2Tokenizer().decode(ds[0][1:-1].tolist())
    assert text.startswith("In the beginning God created the heaven and the earth.")


def test_stale_cache_is_replaced_atomically(cache):
    path = dataset_path("austen-char", "valid")
    header = json.loads((cache / "austen-char" / "valid.bin.json").read_text())
    header["fingerprint"] = "stale"
    (cache / "austen-char" / "valid.bin.json").write_text(json.dumps(header))
    with open(path, "rb") as old:  # a reader holding the old file keeps a whole file
        before = os.stat(path).st_ino
        assert dataset_path("austen-char", "valid") == path
        assert os.stat(path).st_ino != before  # replaced, not rewritten in place
        assert len(old.read()) == header["count"] * 2
    assert read_header(path)["fingerprint"] != "stale"


def test_failed_prepare_leaves_nothing_behind(tmp_path, persuasion):
    out = tmp_path / "keep.bin"
    prepare(write(tmp_path / "a.txt", "good text"), "char", out)
    before = out.read_bytes()
    bad = ToyTokenizer(fail_after=2)
    with pytest.raises(RuntimeError, match="tokenizer failed"):
        prepare(write(tmp_path / "big.txt", persuasion[:5_000]), bad, out, chunk_chars=500)
    assert out.read_bytes() == before and read_header(out)["tokenizer"] == "char"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.txt",
        "big.txt",
        "keep.bin",
        "keep.bin.json",
    ]


def test_raw_paths_are_prepared_into_the_cache(tmp_path, cache):
    src = write(tmp_path / "notes.txt", "Some raw notes.")
    first = dataset_path(src, tokenizer="char")
    assert first.parent == cache / "files" and first.name.startswith("notes.txt-")
    assert dataset_path(src, tokenizer="char") == first
    assert dataset_path(src, tokenizer="gpt2") != first
    write(src, "Changed notes, longer now.")
    path = dataset_path(src, tokenizer="char")
    assert path.name.startswith("notes.txt-") and path != first
    # A prepared file is used as it is, given either file; a path is its own "train" split.
    assert dataset_path(path) == path == dataset_path(str(path) + ".json")
    assert dataset_path(path, "train") == path == dataset_path(src, "train", tokenizer="char")
    with pytest.raises(ValueError, match="split 'valid' asked of .*notes.txt-"):
        dataset_path(path, "valid")


# ---------------------------------------------------------------- errors name the bad value


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "empty file: .*bad.txt"),
        ("  \n\n\t ", "no text .*bad.txt"),
        ("... -- !!! ???", "no usable text .*bad.txt"),
    ],
)
def test_bad_text_files(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        prepare(write(tmp_path / "bad.txt", content), "char", tmp_path / "o.bin")
    assert not (tmp_path / "o.bin").exists()


def test_bad_inputs(tmp_path):
    out = tmp_path / "o.bin"
    with pytest.raises(FileNotFoundError, match="input not found: .*missing.txt"):
        prepare(tmp_path / "missing.txt", "char", out)
    with pytest.raises(ValueError, match="unsupported input file type '.csv'"):
        prepare(write(tmp_path / "t.csv", "a,b"), "char", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt/.jsonl files .* in folder: .*empty"):
        prepare(tmp_path / "empty", "char", out)
    with pytest.raises(ValueError, match=r"j.jsonl:2: no text field 'text' \(found \['body'\]\)"):
        prepare(write(tmp_path / "j.jsonl", '{"text": "a"}\n{"body": "b"}\n'), "char", out)
    with pytest.raises(ValueError, match="k.jsonl:1: not valid JSON"):
        prepare(write(tmp_path / "k.jsonl", "{oops\n"), "char", out)
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt3'"):
        prepare(write(tmp_path / "t.txt", "text"), "gpt3", out)
    with pytest.raises(ValueError, match="split 'valid' applies only"):
        prepare(tmp_path / "t.txt", "char", out, split="valid")
    with pytest.raises(
        ValueError, match="wrap=True needs BOS and EOS tokens; tokenizer 'char' has none"
    ):
        prepare(tmp_path / "t.txt", "char", out, wrap=True)
    assert not out.exists()


def test_bad_dataset_requests(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'austen-bpe'"):
        dataset_path("austen-bpe")
    with pytest.raises(ValueError, match="unknown split 'test' for 'austen-char'"):
        dataset_path("austen-char", "test")
    with pytest.raises(ValueError, match="'austen-char' is tokenized with 'char', not 'gpt2'"):
        dataset_path("austen-char", tokenizer="gpt2")
    with pytest.raises(FileNotFoundError, match="dataset path not found: .*nope.txt"):
        dataset_path(tmp_path / "nope.txt", tokenizer="char")
    src = write(tmp_path / "raw.txt", "raw text")
    with pytest.raises(ValueError, match="raw text .*raw.txt needs a tokenizer"):
        dataset_path(src)
    with pytest.raises(ValueError, match="unknown corpus 'shakespeare'"):
        corpora.corpus_documents("shakespeare")


def test_bad_token_files_and_blocks(tmp_path):
    out = tmp_path / "s.bin"
    prepare(write(tmp_path / "s.txt", "short text"), "char", out)
    with pytest.raises(ValueError, match="holds 10 tokens, fewer than one block of 256"):
        PackedDataset(out)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        PackedDataset(out, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="not a prepared token file .*s.txt"):
        PackedDataset(tmp_path / "s.txt")
    with open(out, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="s.bin has 21 bytes, its header says 20"):
        PackedDataset(out, 4)
    with pytest.raises(FileNotFoundError, match="token file not found"):
        read_header(tmp_path / "none.bin")


class ToyTokenizer:
    """One id per character (a=10, b=11, ...), with optional BOS/EOS; for the corner cases."""

    name = "toy"
    mask_id = 0

    def __init__(self, bos_id=None, eos_id=None, vocab_size=64, offset=10, fail_after=None):
        self.bos_id, self.eos_id, self.vocab_size = bos_id, eos_id, vocab_size
        self.offset, self.fail_after, self.calls = offset, fail_after, 0

    def encode(self, text):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("tokenizer failed")
        return [self.offset + ord(c) - ord("a") for c in text if c.isalpha()]

    def decode(self, ids):
        return "".join(chr(i - self.offset + ord("a")) for i in ids)
