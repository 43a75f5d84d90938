"""Tests of the training loop: losses fall, checkpoints round-trip and are written atomically,
a killed run resumes exactly where it stopped, two data-parallel processes match one, and bad
checkpoints, data paths and settings are clear errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edlm import checkpoint
from edlm.checkpoint import CheckpointError
from edlm.config import ConfigError, ModelConfig, TrainConfig
from edlm.corpora import corpus_documents
from edlm.train import open_data, train


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    docs = corpus_documents("austen", "train")
    text = "\n".join(docs)[:60_000]
    (root / "train.txt").write_text(text)
    (root / "valid.txt").write_text("\n".join(corpus_documents("austen", "valid"))[:8_000])
    return root


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EDLM_CACHE", str(tmp_path_factory.getbasetemp() / "edlm-cache"))


def tiny_config(text_files, out, **kw):
    cfg = TrainConfig(
        data=str(text_files / "train.txt"),
        valid_data=str(text_files / "valid.txt"),
        out=str(out),
        steps=6,
        batch_size=4,
        warmup_steps=2,
        eval_every=3,
        eval_batches=1,
        save_every=3,
        log_every=1,
        lr=1e-3,
        ema=0.9,
        device="cpu",
        model_config=ModelConfig(dim=32, n_heads=2, n_layers=1, cond_dim=16, dropout=0.0),
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def state(run):
    return checkpoint.load(run)["model"]


@pytest.mark.parametrize("kind", ["denoiser", "ar"])
def test_losses_fall(text_files, tmp_path, kind):
    cfg = tiny_config(
        text_files, tmp_path / kind, model=kind, steps=40, eval_every=40, save_every=40, lr=3e-3
    )
    metrics = train(cfg, progress=False)
    lines = [json.loads(x) for x in (tmp_path / kind / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["loss"] for r in lines[:5]) / 5
    last = sum(r["loss"] for r in lines[-5:]) / 5
    assert last < first - 0.3, (first, last)
    assert metrics["valid_loss"] < 3.0  # below uniform over 27 characters (3.30 nats)
    assert metrics["valid_bits_per_token"] == pytest.approx(
        metrics["valid_loss"] / 0.6931471805599453
    )


def test_checkpoint_round_trip(text_files, tmp_path):
    cfg = tiny_config(text_files, tmp_path / "run", steps=3)
    train(cfg, progress=False)
    model, saved_cfg = checkpoint.load_model(tmp_path / "run", use_ema=False)
    assert saved_cfg.model_config.dim == 32 and saved_cfg.steps == 3
    ck = checkpoint.load(tmp_path / "run", train_state=True)
    assert ck["step"] == 3 and ck["ema"] is not None and "optimizer" in ck["train_state"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ck["model"][k])
    xt = torch.full((2, 256), 27)
    out = model(xt, torch.ones(2))
    assert out.shape == (2, 256, 28)


def test_resume_continues_exactly(text_files, tmp_path):
    straight = tiny_config(text_files, tmp_path / "straight")
    train(straight, progress=False)
    broken = tiny_config(text_files, tmp_path / "broken")
    train(broken, progress=False, stop_after=3)  # "killed" after the step-3 checkpoint
    assert checkpoint.load(tmp_path / "broken")["step"] == 3
    train(broken, resume=True, progress=False)
    # Same data, noise and optimizer state: the same run, up to the ~1e-7 relative jitter of
    # PyTorch's multithreaded CPU reductions (bitwise equal with one thread).
    a, b = state(tmp_path / "straight"), state(tmp_path / "broken")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    curve = lambda run: [
        json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert curve(tmp_path / "broken") == pytest.approx(curve(tmp_path / "straight"), rel=1e-5)


def test_one_thread_training_is_bitwise_repeatable(text_files, tmp_path):
    # `make checkpoints` relies on this to reproduce the bundled models byte for byte.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in ("a", "b"):
            train(tiny_config(text_files, tmp_path / name), progress=False)
    finally:
        torch.set_num_threads(threads)
    a, b = checkpoint.load(tmp_path / "a"), checkpoint.load(tmp_path / "b")
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_kill_mid_write_loses_nothing(text_files, tmp_path, monkeypatch):
    cfg = tiny_config(text_files, tmp_path / "run")
    real = checkpoint.save_file

    def dying(tensors, filename, metadata=None):
        if metadata and metadata.get("step") == "6":
            Path(filename).write_bytes(b"partial")
            raise KeyboardInterrupt("killed mid-write")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert checkpoint.load(tmp_path / "run")["step"] == 3  # latest still names the complete one
    assert not list((tmp_path / "run").glob(".step-*"))  # the partial directory is gone
    monkeypatch.setattr(checkpoint, "save_file", real)
    train(cfg, resume=True, progress=False)
    assert checkpoint.load(tmp_path / "run")["step"] == 6


@pytest.mark.slow  # subprocesses that train
def test_sigkill_then_resume(text_files, tmp_path):
    # A real kill -9 of `edlm train` between checkpoints, then --resume finishes the run.
    run = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "edlm.cli",
        "train",
        "--data",
        str(text_files / "train.txt"),
        "--valid_data",
        str(text_files / "valid.txt"),
        "--out",
        str(run),
        "--no-progress",
        "--steps=400",
        "--batch_size=2",
        "--save_every=2",
        "--eval_every=1000",
        "--log_every=1",
        "--model.dim=16",
        "--model.n_heads=1",
        "--model.n_layers=1",
        "--model.cond_dim=8",
        "--device=cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (
        checkpoint.has_checkpoint(run) and checkpoint.load(run)["step"] >= 4
    ):
        time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint.load(run)["step"]
    assert 4 <= killed_at < 400
    args[args.index("--steps=400")] = f"--steps={killed_at + 4}"
    subprocess.run(args + ["--resume"], env=env, check=True, capture_output=True)
    assert checkpoint.load(run)["step"] == killed_at + 4


@pytest.mark.slow  # subprocesses that train
def test_two_processes_match_one(text_files, tmp_path):
    # torchrun with 2 CPU processes (gloo), global batch 4 = 2 x 2, against one process.
    one = tiny_config(text_files, tmp_path / "one", steps=3, save_every=3)
    train(one, progress=False)
    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys, json\n"
        "from edlm.config import TrainConfig, from_dict\n"
        "from edlm.train import train\n"
        "cfg = from_dict(TrainConfig, json.loads(open(sys.argv[1]).read()))\n"
        "train(cfg, progress=False)\n"
    )
    two = tiny_config(text_files, tmp_path / "two", steps=3, save_every=3)
    cfg_file = tmp_path / "two.json"
    from edlm.config import dumps

    cfg_file.write_text(dumps(two))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(cfg_file),
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    a, b = state(tmp_path / "one"), state(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    la = [
        json.loads(x)["loss"] for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    ]
    lb = [
        json.loads(x)["loss"] for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    ]
    assert la == pytest.approx(lb, rel=1e-4)


def test_gradient_accumulation_matches_full_batch(text_files, tmp_path):
    full = tiny_config(text_files, tmp_path / "full", steps=3)
    train(full, progress=False)
    acc = tiny_config(text_files, tmp_path / "acc", steps=3, micro_batch_size=1)
    train(acc, progress=False)
    a, b = state(tmp_path / "full"), state(tmp_path / "acc")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_bad_checkpoints_are_clear_errors(text_files, tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at .*does not exist"):
        checkpoint.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="expected a checkpoint directory"):
        checkpoint.load(tmp_path / "empty")
    cfg = tiny_config(text_files, tmp_path / "run", steps=3)
    train(cfg, progress=False)
    ck = checkpoint.resolve(tmp_path / "run")
    (ck / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(checkpoint.CheckpointError, match="model.safetensors is corrupt"):
        checkpoint.load(tmp_path / "run")
    (ck / "model.safetensors").unlink()
    with pytest.raises(
        checkpoint.CheckpointError, match="checkpoint file missing: .*model.safetensors"
    ):
        checkpoint.load(ck)
    (tmp_path / "run" / "latest").write_text("step-9999999\n")
    with pytest.raises(checkpoint.CheckpointError, match="names 'step-9999999', which is missing"):
        checkpoint.load(tmp_path / "run")
    (tmp_path / "run" / "latest").write_text(ck.name + "\n")
    cfg_json = json.loads((ck / "config.json").read_text())
    cfg_json["colour"] = "blue"
    (ck / "config.json").write_text(json.dumps(cfg_json))
    with pytest.raises(
        checkpoint.CheckpointError,
        match="invalid config: unknown config keys for TrainConfig: colour",
    ):
        checkpoint.load(ck)


def test_unsafe_train_state_is_refused(text_files, tmp_path):
    cfg = tiny_config(text_files, tmp_path / "run", steps=3)
    train(cfg, progress=False)
    ck = checkpoint.resolve(tmp_path / "run")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"optimizer": Evil()}, ck / "train_state.pt")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or unsafe"):
        checkpoint.load(ck, train_state=True)


def test_bad_data_and_settings(text_files, tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset path not found"):
        train(
            tiny_config(text_files, tmp_path / "a", data=str(tmp_path / "nope.txt")), progress=False
        )
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        train(tiny_config(text_files, tmp_path / "b", data=str(empty)), progress=False)
    with pytest.raises(
        ValueError,
        match="batch_size 4 is not divisible by micro_batch_size 3|per-rank batch 4 is not divisible",
    ):
        train(tiny_config(text_files, tmp_path / "d", micro_batch_size=3), progress=False)


def test_a_tokenizers_own_mask_id_reaches_the_model(tmp_path):
    """A BERT-style vocabulary whose [MASK] is id 1, not the last id: the data header's mask id
    and tokenizer go into the saved config, and the model masks with [MASK], never a real token."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    words = ["[UNK]", "[MASK]", "[CLS]", "[SEP]", "hello", "world", "the", "a", "cat", "sat"]
    core = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]")
    )
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        mask_token="[MASK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    ).save_pretrained(tmp_path / "tok")
    rng = __import__("random").Random(0)
    for name, n in (("train", 3000), ("valid", 600)):
        (tmp_path / f"{name}.txt").write_text(" ".join(rng.choice(words[4:]) for _ in range(n)))
    cfg = TrainConfig(
        data=str(tmp_path / "train.txt"),
        valid_data=str(tmp_path / "valid.txt"),
        out=str(tmp_path / "run"),
        tokenizer=str(tmp_path / "tok"),
        block_size=16,
        steps=2,
        batch_size=4,
        warmup_steps=1,
        eval_every=2,
        eval_batches=1,
        save_every=2,
        device="cpu",
        model_config=ModelConfig(dim=16, n_heads=2, n_layers=1, cond_dim=8, dropout=0.0),
    )
    train(cfg, progress=False)
    model, saved = checkpoint.load_model(tmp_path / "run", kind="denoiser")
    mc = saved.model_config
    assert (mc.vocab_size, mc.mask_id, mc.length) == (10, 1, 16) and model.mask_id == 1
    assert mc.tokenizer == str((tmp_path / "tok").resolve())
    assert checkpoint.tokenizer_of(saved).decode([4, 5]) == "hello world"
    xt = torch.tensor([[2, 1, 1, 9, 1, 3] + [1] * 10])
    logp = model(xt, torch.ones(1))
    assert torch.all(logp[0, xt[0] == 1, 1] == float("-inf"))  # [MASK] is never predicted
    assert torch.all(logp[0, xt[0] == 1, 9] > float("-inf"))  # the last id ("sat") is a real word


def test_overrides_that_conflict_with_the_data_or_the_init_checkpoint(text_files, tmp_path):
    base = tiny_config(text_files, tmp_path / "den", steps=2, eval_every=2, save_every=2)
    train(base, progress=False)
    for change, message in (
        ({"vocab_size": 100}, r"model.vocab_size=100 conflicts with the data .* vocab_size = 28"),
        ({"mask_id": 5}, r"model.mask_id=5 conflicts with the data .* mask_id = 27"),
    ):
        cfg = tiny_config(text_files, tmp_path / "x", steps=2)
        for k, v in change.items():
            setattr(cfg.model_config, k, v)
        with pytest.raises(ConfigError, match=message):
            train(cfg, progress=False)
    cfg = tiny_config(text_files, tmp_path / "len", steps=2, block_size=32)
    cfg.model_config.length = 64
    with pytest.raises(
        ConfigError, match=r"model.length=64 conflicts with the data .* length = 32"
    ):
        train(cfg, progress=False)
    energy = tiny_config(
        text_files, tmp_path / "nce", model="energy", init_from=str(tmp_path / "den"), steps=2
    )
    energy.model_config.dim = 64
    with pytest.raises(ConfigError, match=r"model.dim=64 conflicts with init_from .* \(dim = 32\)"):
        train(energy, progress=False)
    ar_init = tiny_config(
        text_files, tmp_path / "ar", model="ar", init_from=str(tmp_path / "den"), steps=2
    )
    with pytest.raises(CheckpointError, match="holds a 'denoiser' model, not 'ar'"):
        train(ar_init, progress=False)


def test_a_path_without_valid_data_holds_out_a_slice(text_files, tmp_path, capsys):
    cfg = tiny_config(
        text_files, tmp_path / "run", valid_data="", steps=2, eval_every=2, save_every=2
    )
    metrics = train(cfg, progress=False)
    assert "valid_loss" in metrics
    line = next(x for x in capsys.readouterr().out.splitlines() if "holding out" in x)
    held, total = (int(w) for w in line.split("last ")[1].split(" blocks")[0].split(" of "))
    assert held == max(1, round(total * 0.05)) and total > held
    train_data, valid_data = open_data(cfg)
    assert len(train_data) == total - held and len(valid_data) == held
    seen = {tuple(r) for r in train_data.blocks(range(train_data.num_blocks)).tolist()}
    assert not seen & {tuple(r) for r in valid_data.blocks(range(held)).tolist()}
