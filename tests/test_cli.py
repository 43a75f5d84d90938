"""Tests of the `edlm` command line: every subcommand runs on the bundled models, and on bad input
every subcommand exits non-zero with one line `edlm <command>: ...` naming the option and value,
never a traceback."""

import json
import subprocess
import sys

import pytest
import torch

from edlm import checkpoint
from edlm.cli import main
from edlm.config import ModelConfig, TrainConfig
from edlm.models import ARModel, Denoiser, EnergyModel


@pytest.mark.slow  # samples every bundled model
def test_demo_runs(capsys):
    argv = [
        "demo",
        "--steps",
        "8",
        "--num",
        "2",
        "--k",
        "2",
        "--prompt",
        "it is a truth",
        "--judge",
        "none",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for method in ("MDLM", "EDLM-AR (k=2)", "EDLM-NCE (k=2)"):
        assert f"=== {method}" in out
    assert "no judge" in out and out.count("  it is a truth") == 6
    mdlm_row = next(line for line in out.splitlines() if line.startswith("MDLM  "))
    assert "nan" not in mdlm_row and mdlm_row.split()[-2] == "-"  # MDLM has no IS steps: no ESS


def test_sample_defaults_to_the_bundled_denoiser(capsys):
    assert main(["sample", "--steps", "4", "--num", "1", "--length", "32"]) == 0
    assert "--- stats" in capsys.readouterr().out


def test_sample_prints_the_importance_sampling_stats(capsys):
    ar = "ar:ar-tiny"  # a bundled checkpoint by name
    args = ["sample", "--steps", "4", "--num", "2", "--length", "32", "--energy", ar, "--k", "3"]
    assert main(args + ["--final", "sample"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("--- stats "))
    stats = json.loads(line[len("--- stats ") :])
    assert stats["final"] == "sample" and stats["is_steps"] > 0
    assert 1.0 <= stats["mean_ess"] <= 3.0 and stats["mean_sd_log_w"] > 0
    assert stats["mean_energy_gain"] is not None
    with pytest.raises(SystemExit, match="edlm sample: argument --final: invalid choice: 'max'"):
        main(args + ["--final", "max"])


def test_sample_top_p_and_top_k(capsys):
    args = ["sample", "--steps", "4", "--num", "2", "--length", "32", "--final", "sample"]
    for flags in (["--top-k", "1"], ["--top-p", "0.9"], ["--top-p", "0.9", "--top-k", "20"]):
        assert main(args + flags) == 0
        assert "--- stats" in capsys.readouterr().out


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "sample", "eval", "sweep", "demo"):
        assert command in out.splitlines()[0] and f"edlm {command}" in out


def test_eval_command_prints_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDLM_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "t.txt"
    text.write_text("it is a truth universally acknowledged that a single man in possession " * 6)
    mc = ModelConfig(vocab_size=28, length=16, dim=32, n_heads=2, n_layers=1, cond_dim=16)
    torch.manual_seed(0)
    den = Denoiser(mc)
    models = {"denoiser": den, "ar": ARModel(mc), "energy": EnergyModel.from_denoiser(den)}
    for kind, model in models.items():
        checkpoint.save(
            tmp_path / kind,
            1,
            model_state=model.state_dict(),
            cfg=TrainConfig(model=kind, model_config=mc, tokenizer="char"),
        )
    common = [
        "--denoiser",
        str(tmp_path / "denoiser"),
        "--data",
        str(text),
        "--num-sequences",
        "4",
        "--num-t",
        "2",
        "--batch-size",
        "8",
        "--device",
        "cpu",
    ]
    common += ["--steps", "2,4", "--num-is", "3"]
    assert main(["eval", *common, "--energy", f"ar:{tmp_path / 'ar'}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for label in ("MDLM NELBO (continuous t)", "MDLM, 2 steps", "EDLM SIR k=4, 4 steps"):
        row = next(line for line in lines if line.startswith(label))
        assert row.split()[len(label.split())] == "<=", row  # every row here is a bound
    assert not any("paper" in line for line in lines[:-1])
    carry = f"ar-carry:{tmp_path / 'ar'}"
    assert main(["eval", *common, "--energy", carry, "--bound", "paper"]) == 0
    lines = capsys.readouterr().out.splitlines()
    paper = [line for line in lines if line.startswith("EDLM paper formula")]
    assert paper and not any("<=" in line for line in paper)  # never printed as a bound
    assert paper[0].startswith("EDLM paper formula (Z = 1)")  # carry-over: Z = 1, no draws
    assert main(["eval", *common, "--energy", f"ar:{tmp_path / 'ar'}", "--bound", "infinite"]) == 0
    assert "EDLM k=inf, 4 steps" in capsys.readouterr().out
    # A fresh NCE energy is 0 everywhere: EDLM's bound is MDLM's, and so is the paper's formula.
    assert main(["eval", *common, "--energy", f"nce:{tmp_path / 'energy'}", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for T in ("2", "4"):
        b = res["steps"][T]
        assert b["bound"] == "sir" and b["edlm_T_per_token"] == pytest.approx(
            b["mdlm_T_per_token"], abs=1e-6
        )
    assert (
        main(
            [
                "eval",
                *common,
                "--energy",
                f"nce:{tmp_path / 'energy'}",
                "--bound",
                "paper",
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["num_is"] == 3 and res["paper_u_per_token"] == pytest.approx(
        res["nelbo_per_token"], rel=1e-6
    )
    with pytest.raises(SystemExit, match="not 'energy'"):
        main(["eval"] + common + ["--energy", f"nce:{tmp_path / 'ar'}"])
    with pytest.raises(SystemExit, match="KIND:PATH"):
        main(["eval"] + common + ["--energy", "foo"])


@pytest.fixture(scope="module")
def bad_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{ not json")
    (corrupt / "meta.json").write_text("{}")
    truncated = root / "truncated"
    truncated.mkdir()
    for f in ("config.json", "meta.json"):
        (truncated / f).write_bytes((checkpoint.bundled("denoiser-tiny") / f).read_bytes())
    (truncated / "model.safetensors").write_bytes(b"\x00" * 16)
    text = root / "t.txt"
    text.write_text("it is a truth universally acknowledged that a single man in possession " * 40)
    return {"corrupt": str(corrupt), "truncated": str(truncated), "text": str(text), "root": root}


NO_CUDA = not torch.cuda.is_available()
BAD = [
    # (command, arguments, what the line starts with after "edlm <command>: ", needs no CUDA)
    ("train", ["--device=banana"], "unknown device 'banana'", False),
    ("train", ["--device=cuda"], "device 'cuda' is not available", True),
    ("train", ["--model.dim=-4"], "model.dim must be >= 1, got -4", False),
    ("train", ["--steps=-1"], "steps must be >= 1, got -1", False),
    ("train", ["--model", "gpt"], "model must be one of denoiser, ar, energy, got 'gpt'", False),
    ("train", ["--preset", "huge"], "unknown model preset 'huge'", False),
    ("train", ["--stepz=3"], "unknown config key 'stepz'", False),
    ("train", ["--lr=fast"], "config key 'lr' expects a number, got 'fast'", False),
    ("train", ["--model", "energy", "--steps=1"], "model=energy needs init_from", False),
    (
        "train",
        ["--model", "energy", "--init-from", "{root}/missing"],
        "no checkpoint at {root}/missing",
        False,
    ),
    (
        "train",
        ["--model", "energy", "--init-from", "{corrupt}", "--out", "{root}/o"],
        "checkpoint {corrupt} has an unreadable",
        False,
    ),
    (
        "train",
        ["--init-from", "{truncated}", "--out", "{root}/o"],
        "checkpoint file {truncated}/model.safetensors is corrupt",
        False,
    ),
    ("train", ["--data", "{root}/none.txt", "--out", "{root}/o"], "dataset path not found", False),
    (
        "train",
        ["--data", "{text}", "--model.vocab_size=100", "--out", "{root}/o"],
        "model.vocab_size=100 conflicts with the data",
        False,
    ),
    ("train", ["--steps"], "--steps needs a value", False),
    ("sample", ["--device", "banana"], "--device banana: unknown device 'banana'", False),
    ("sample", ["--device", "cuda"], "--device cuda: device 'cuda' is not available", True),
    (
        "sample",
        ["--out", "{root}/no/such/s.jsonl"],
        "--out {root}/no/such/s.jsonl: the folder {root}/no/such does not exist",
        False,
    ),
    ("sample", ["--steps", "-1"], "--steps must be >= 1, got -1", False),
    ("sample", ["--steps", "x"], "argument --steps: invalid int value: 'x'", False),
    ("sample", ["--k", "0"], "--k must be >= 1, got 0", False),
    ("sample", ["--top-p", "0"], "--top-p must be in (0, 1], got 0.0", False),
    ("sample", ["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5", False),
    ("sample", ["--top-p", "nan"], "--top-p must be in (0, 1], got nan", False),
    ("sample", ["--top-k", "-2"], "--top-k must be >= 0, got -2", False),
    (
        "sample",
        ["--denoiser", "{root}/missing"],
        "--denoiser {root}/missing: no checkpoint at",
        False,
    ),
    (
        "sample",
        ["--denoiser", "{corrupt}"],
        "--denoiser {corrupt}: checkpoint {corrupt} has an unreadable",
        False,
    ),
    (
        "sample",
        ["--prompt", "a b " * 200],
        "--prompt is 800 tokens, not shorter than the length 256",
        False,
    ),
    ("sample", ["--energy", "xx"], "--energy must be KIND:PATH", False),
    (
        "sample",
        ["--window", "2", "--steps", "2"],
        "sample: window must be in [0, 1], got 2.0",
        False,
    ),
    ("sample", ["--bogus"], "unrecognized arguments: --bogus", False),
    ("eval", [], "the following arguments are required: --denoiser", False),
    (
        "eval",
        ["--denoiser", "{corrupt}"],
        "--denoiser {corrupt}: checkpoint {corrupt} has an unreadable",
        False,
    ),
    ("eval", ["--denoiser", "{truncated}"], "--denoiser {truncated}: checkpoint file", False),
    (
        "eval",
        ["--denoiser", "{root}/missing"],
        "--denoiser {root}/missing: no checkpoint at",
        False,
    ),
    (
        "eval",
        ["--denoiser", "{truncated}", "--device", "banana"],
        "--device banana: unknown device",
        False,
    ),
    ("eval", ["--denoiser", "{truncated}", "--num-t", "0"], "--num-t must be >= 1, got 0", False),
    (
        "eval",
        ["--denoiser", "{truncated}", "--bound", "best"],
        "--bound must be sir, infinite or paper, got 'best'",
        False,
    ),
    ("eval", ["--denoiser", "{truncated}", "--steps", "0"], "--steps must be >= 1, got 0", False),
    (
        "eval",
        ["--denoiser", "{truncated}", "--bound", "infinite", "--num-is", "1"],
        "--num-is must be >= 2 with --bound infinite, got 1",
        False,
    ),
    (
        "eval",
        ["--denoiser", "{truncated}", "--num-is", "0"],
        "--num-is must be >= 1 with --bound sir, got 0",
        False,
    ),
    ("sweep", ["--device", "banana"], "--device banana: unknown device", False),
    ("sweep", ["--steps", "8,x"], "--steps must be a comma-separated list of int", False),
    ("sweep", ["--methods", "mdlm,gpt"], "unknown method 'gpt' in --methods", False),
    ("sweep", ["--denoiser", "{corrupt}"], "--denoiser {corrupt}: checkpoint", False),
    ("sweep", ["--suite", "kjv"], "argument --suite: invalid choice: 'kjv'", False),
    (
        "sweep",
        ["--denoiser", "oracle", "--methods", "ar", "--ar", "hf:/nowhere"],
        "--methods ar samples the --ar model: it must be ar:CKPT, got 'hf:/nowhere'",
        False,
    ),
    (
        "sweep",
        ["--denoiser", "oracle", "--methods", "edlm-nce", "--nce", "nce:{corrupt}"],
        "--energy nce:{corrupt}: checkpoint",
        False,
    ),
    ("sweep", ["--denoiser", "oracle", "--num", "0"], "--num must be >= 1, got 0", False),
    ("demo", ["--oracle-num", "1"], "--oracle-num must be >= 2, got 1", False),
    ("demo", ["--steps", "0"], "--steps must be >= 1, got 0", False),
    ("demo", ["--device", "banana"], "--device banana: unknown device", False),
    ("demo", ["--prompt", "a b " * 200], "--prompt is 800 tokens", False),
    ("demo", ["--num", "x"], "argument --num: invalid int value: 'x'", False),
]


@pytest.mark.parametrize(
    "command,args,start,cuda_absent", BAD, ids=[f"{c}-{i}" for i, (c, *_) in enumerate(BAD)]
)
def test_bad_input_is_one_line(
    command, args, start, cuda_absent, bad_paths, capsys, monkeypatch, tmp_path
):
    if cuda_absent and not NO_CUDA:
        pytest.skip("CUDA is available here")
    monkeypatch.setenv("EDLM_CACHE", str(tmp_path / "cache"))
    fill = lambda s: s.format(**dict(bad_paths.items()))
    with pytest.raises(SystemExit) as info:  # any other exception would be a traceback
        main([command, *map(fill, args)])
    line = str(info.value.code)
    assert line.startswith(f"edlm {command}: {fill(start)}"), line
    assert "\n" not in line and "Traceback" not in line


def test_bad_input_from_the_real_command(bad_paths):
    for argv, start in (
        (["sample", "--device", "banana"], "edlm sample: --device banana"),
        (["eval", "--denoiser", bad_paths["corrupt"]], "edlm eval: --denoiser"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "edlm.cli", *argv], capture_output=True, text=True, check=False
        )
        assert run.returncode != 0 and run.stderr.startswith(start), run.stderr
        assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_unknown_command():
    with pytest.raises(SystemExit, match="edlm: unknown command 'trian'"):
        main(["trian"])


def test_sample_with_the_exact_denoiser_and_the_source_energy(capsys):
    """`edlm sample --denoiser oracle --energy oracle:`: EDLM with the exact denoiser and a
    perfect energy, at any length; the prompt is kept."""
    code = main(
        ["sample", "--denoiser", "oracle", "--energy", "oracle:", "--k", "4", "--steps", "8"]
        + ["--num", "2", "--length", "40", "--prompt", "it is a truth"]
    )
    assert code == 0
    out = capsys.readouterr().out
    texts = [
        b.split("\n", 1)[1].split("\n--- ")[0].rstrip("\n") for b in out.split("--- sample ")[1:]
    ]
    assert len(texts) == 2 and all(t.startswith("it is a truth") and len(t) == 40 for t in texts)
    stats = json.loads(out.split("--- stats ", 1)[1])
    assert stats["method"] == "EDLM" and stats["is_steps"] >= 1


def test_demo_oracle_suite(capsys):
    """`edlm demo --suite oracle`: exact and trained denoisers side by side, each sample scored
    exactly, the source's entropy stated."""
    code = main(["demo", "--suite", "oracle", "--steps", "4", "--oracle-num", "4", "--k", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "entropy rate is H = 2.596" in out
    for label in (
        "exact samples",
        "MDLM, exact denoiser",
        "EDLM-oracle k=2, exact denoiser",
        "MDLM, trained denoiser",
        "EDLM-AR k=2, trained denoiser",
    ):
        assert f"=== {label}:" in out, label
