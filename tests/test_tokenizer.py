"""Tests of edlm.tokenizer: text8 characters, offline GPT-2 BPE and local Hugging Face tokenizers;
round trips on corpus slices, known GPT-2 ids, the mask's place, text8 normalization, bad input.
"""

import hashlib
import lzma
import sys
from importlib import resources

import pytest

from edlm.corpora import corpus_documents
from edlm.tokenizer import (
    CharTokenizer,
    GPT2Tokenizer,
    Tokenizer,
    load_tokenizer,
    normalize_text8,
)


@pytest.fixture(scope="module")
def austen_slice():
    return corpus_documents("austen", "valid")[0][:20_000]


# ---------------------------------------------------------------- char (text8)


def test_char_vocabulary_and_mask():
    tok = load_tokenizer("char")
    assert isinstance(tok, CharTokenizer) and isinstance(tok, Tokenizer)
    assert (tok.vocab_size, tok.mask_id, tok.bos_id, tok.eos_id) == (28, 27, None, None)
    assert tok.encode("az ") == [0, 25, 26]
    assert tok.decode([0, 25, 26, 27]) == "az _"
    assert tok.mask_id == tok.vocab_size - 1
    assert tok.mask_id not in tok.encode("".join(map(chr, range(32, 0x250))))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello, World!", "hello world "),
        ("  It's -- a\n\ttest...", " it s a test "),
        ("Born 1818.", "born one eight one eight "),  # digits spelled out, as wikifil.pl does
        ("Émile née", " mile n e"),  # letters outside a-z are separators, as in text8
        ("", ""),
        ("!?", " "),
    ],
)
def test_text8_normalization(text, expected):
    assert normalize_text8(text) == expected
    tok = CharTokenizer()
    assert tok.decode(tok.encode(text)) == expected


def test_char_round_trip(austen_slice):
    tok = CharTokenizer()
    ids = tok.encode(austen_slice)
    assert all(0 <= i < 27 for i in ids)
    text = tok.decode(ids)
    assert text == normalize_text8(austen_slice)
    assert "  " not in text and set(text) <= set(tok.alphabet)
    assert tok.encode(text) == ids


def test_char_bad_id():
    with pytest.raises(ValueError, match="char: token id 28 is out of range"):
        CharTokenizer().decode([1, 28])
    with pytest.raises(ValueError, match="token id -1"):
        CharTokenizer().decode([-1])


# ---------------------------------------------------------------- gpt2


def test_gpt2_ranks_file_is_the_bundled_one():
    raw = lzma.decompress((resources.files("edlm") / "assets" / "gpt2.tiktoken.xz").read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    assert digest == "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


def test_gpt2_known_ids():
    tok = load_tokenizer("gpt2")
    assert isinstance(tok, GPT2Tokenizer) and isinstance(tok, Tokenizer)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("The quick brown fox") == [464, 2068, 7586, 21831]
    assert tok.encode("\n\n") == [628]
    assert (tok.vocab_size, tok.mask_id, tok.bos_id, tok.eos_id) == (50258, 50257, 50256, 50256)
    assert tok.decode([50256]) == "<|endoftext|>"
    assert tok.decode([15496, 50257, 995]) == "Hello<|mask|> world"


def test_gpt2_special_text_is_plain_text():
    # Web text that contains "<|endoftext|>" must not inject document boundaries or masks.
    tok = GPT2Tokenizer()
    ids = tok.encode("a<|endoftext|>b<|mask|>")
    assert tok.eos_id not in ids and tok.mask_id not in ids
    assert tok.decode(ids) == "a<|endoftext|>b<|mask|>"


def test_gpt2_round_trip(austen_slice):
    tok = GPT2Tokenizer()
    ids = tok.encode(austen_slice)
    assert max(ids) < 50256 and len(ids) < len(austen_slice) / 3
    assert tok.decode(ids) == austen_slice
    unicode = "naïve café — “quoted” 日本語 🙂\n\n  spaced\ttabs"
    assert tok.decode(tok.encode(unicode)) == unicode


def test_gpt2_bad_id():
    with pytest.raises(ValueError, match="gpt2: token id 50258 is out of range"):
        GPT2Tokenizer().decode([50258])


# ---------------------------------------------------------------- factory and Hugging Face


def test_factory_passes_objects_through():
    tok = CharTokenizer()
    assert load_tokenizer(tok) is tok


@pytest.mark.parametrize("bad", ["gpt3", "no/such/tokenizer-dir", ""])
def test_unknown_tokenizer_names_the_value(bad):
    with pytest.raises(ValueError, match="unknown tokenizer") as info:
        load_tokenizer(bad)
    assert repr(bad) in str(info.value)


def _save_hf_tokenizer(folder, mask: bool):
    """A tiny word-level Hugging Face tokenizer, built and saved locally."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {w: i for i, w in enumerate(["[UNK]", "[CLS]", "[SEP]", "hello", "world", "the"])}
    if mask:
        vocab["[MASK]"] = len(vocab)
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    core.decoder = tokenizers.decoders.WordPiece()
    special = {"unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    if mask:
        special["mask_token"] = "[MASK]"
    transformers.PreTrainedTokenizerFast(tokenizer_object=core, **special).save_pretrained(folder)
    return folder


def test_hf_tokenizer_without_mask_gets_a_new_last_id(tmp_path):
    folder = _save_hf_tokenizer(tmp_path / "tok", mask=False)
    tok = load_tokenizer(folder)
    assert isinstance(tok, Tokenizer)
    assert tok.name == str(folder.resolve())
    assert (tok.mask_id, tok.vocab_size) == (6, 7)
    assert (tok.bos_id, tok.eos_id) == (1, 2)  # CLS/SEP stand in for BOS/EOS
    ids = tok.encode("hello the world")
    assert ids == [3, 5, 4]  # no special tokens added
    assert tok.decode(ids) == "hello the world"
    assert "<|mask|>" in tok.decode([3, tok.mask_id, 4])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([7])
    assert load_tokenizer(tok.name).mask_id == 6  # the recorded name loads it again


def test_hf_tokenizer_keeps_its_own_mask(tmp_path):
    tok = load_tokenizer(_save_hf_tokenizer(tmp_path / "tok", mask=True))
    assert (tok.mask_id, tok.vocab_size) == (6, 7)
    assert "[MASK]" in tok.decode([3, 6])


def test_hf_folder_without_tokenizer(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="unknown tokenizer .*empty"):
        load_tokenizer(tmp_path / "empty")


def test_hf_folder_without_transformers_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="needs `transformers`: pip install transformers"):
        load_tokenizer(tmp_path)
