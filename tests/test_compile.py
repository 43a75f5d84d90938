"""`--compile`: the three fused ops inside one fullgraph compiled region (and the explicit
generator that breaks it), compiled forwards sampling exactly what eager samples without
recompiling per step, compiled training matching eager and resuming, checkpoints without
`_orig_mod.` keys, and a compiler failure as one line. Inductor compiles C++ here, so the model
tests are slow (tens of seconds per graph on a small CPU): they share one small shape."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from torch._dynamo.utils import counters

import edlm
from edlm import checkpoint, ops
from edlm.cli import main
from edlm.config import ModelConfig
from edlm.corpora import corpus_documents
from edlm.models import AREnergy, ARModel, Denoiser, compile_forwards


def fused_step(logits, xt, mask_id):
    """A sampler step with all three fused ops: K = 3 candidates, their log-prob by
    sequence_logprob, one kept per row by importance_resample (default generator)."""
    B, L, _ = logits.shape
    cand, logp = ops.masked_sample(logits, xt, mask_id, num_samples=3)  # [B, 3, L]
    flat = cand.reshape(B * 3, L)
    seq = ops.sequence_logprob(logits.repeat_interleave(3, 0), flat, (xt == mask_id).repeat(3, 1))
    log_w = seq.view(B, 3) - logp.sum(-1) + cand.float().mean(-1)  # [B, 3]: a real-valued mix
    index, ess = ops.importance_resample(log_w, num_samples=2)  # [B, 2], [B]
    return cand.gather(1, index[:, :, None].expand(B, 2, L)), ess, seq


def test_the_fused_ops_compile_in_one_graph_and_draw_as_eager():
    logits = torch.randn(4, 9, 7)
    xt = torch.randint(0, 6, (4, 9))
    xt[:, ::2] = 6
    explained = torch._dynamo.explain(fused_step)(logits, xt, 6)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    compiled = torch.compile(fused_step, fullgraph=True)
    torch.manual_seed(3)
    got = compiled(logits, xt, 6)
    torch.manual_seed(3)
    want = fused_step(logits, xt, 6)
    assert torch.equal(got[0], want[0])  # same seeds drawn from the default generator
    torch.testing.assert_close(got[1], want[1])
    torch.testing.assert_close(got[2], want[2])
    torch.manual_seed(4)
    assert not torch.equal(compiled(logits, xt, 6)[0], got[0])  # the draws follow the seed


def test_an_explicit_generator_is_a_graph_break():
    """Why `edlm.sample`'s step (seeded by a torch.Generator) is not compiled: dynamo cannot pass
    a Generator to a custom op (BENCHMARKS.md, "Compiled forwards")."""

    def step(logits, xt, g):
        return ops.masked_sample(logits * 2.0, xt, 6, num_samples=2, generator=g)[0]

    logits, xt = torch.randn(2, 5, 7), torch.full((2, 5), 6)
    explained = torch._dynamo.explain(step)(logits, xt, torch.Generator().manual_seed(0))
    (reason,) = explained.break_reasons  # the op call itself, at the Generator argument
    assert "Generator" in reason.reason
    with pytest.raises(torch._dynamo.exc.Unsupported):
        torch.compile(step, fullgraph=True)(logits, xt, torch.Generator().manual_seed(0))


CFG = ModelConfig(vocab_size=11, length=16, dim=32, n_heads=2, n_layers=1, cond_dim=16)


def models():
    """A denoiser and an AR model whose outputs depend on their inputs (random weights, the
    zero-initialized output and adaLN layers included), in eval mode."""
    torch.manual_seed(0)
    out = []
    for model in (Denoiser(CFG), ARModel(CFG)):
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.3)
        out.append(model.eval())
    return out


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_compiled_sampling_draws_what_eager_draws_and_compiles_once_per_region():
    den, ar = models()
    cden, car = copy.deepcopy(den), copy.deepcopy(ar)
    keys = list(den.state_dict())
    compile_forwards(cden)
    energy, cenergy = AREnergy(ar, CFG.mask_id), compile_forwards(AREnergy(car, CFG.mask_id))
    assert list(cden.state_dict()) == keys  # no _orig_mod. prefix
    kw = dict(length=16, mask_id=CFG.mask_id, steps=8, return_stats=True)
    for k in (1, 2):  # MDLM, then EDLM with the AR energy (AR forward + sequence_logprob)
        before = graphs()
        runs = [
            edlm.sample(
                d,
                batch_size=3,
                energy=e if k > 1 else None,
                num_candidates=k,
                generator=torch.Generator().manual_seed(1),
                **kw,
            )
            for d, e in ((den, energy), (cden, cenergy))
        ]
        (x, stats), (cx, cstats) = runs
        assert stats["network_calls"] > 2 and cstats["network_calls"] == stats["network_calls"]
        assert k == 1 or stats["is_steps"] > 2
        # The logits differ by float rounding only, so a draw could differ only where a uniform
        # falls within ~1e-6 of a boundary of the inverse CDF: bitwise equal samples.
        assert torch.equal(cx, x)
        if k > 1:
            torch.testing.assert_close(cstats["ess"], stats["ess"], rtol=1e-4, atol=1e-4)
        assert graphs() - before == 1  # one graph per region for the whole run: no recompiles
    xt = torch.full((3, 16), CFG.mask_id)
    xt[:, ::3] = 2
    t = torch.rand(3)
    with torch.no_grad():
        torch.testing.assert_close(cden(xt, t), den(xt, t), rtol=1e-4, atol=1e-4)
        before = graphs()
        for batch in (5, 6, 7):  # another batch recompiles once, dynamic, then reuses it
            x = edlm.sample(cden, batch_size=batch, length=16, mask_id=CFG.mask_id, steps=4)
            assert x.shape == (batch, 16)
        assert graphs() - before == 1


@pytest.mark.slow
def test_compiled_ar_generate_draws_what_eager_draws_and_never_runs_stale_weights():
    """generate(compile=True): one frozen graph per weights, reused for every step (no recompile
    within a run); it draws the eager cached sampler's tokens for the same generator, and after
    an in-place weight update it recompiles and draws the new weights' tokens, not the old."""
    _, ar = models()
    car = compile_forwards(copy.deepcopy(ar))
    assert car.compile_generate and not getattr(ar, "compile_generate", False)
    before = graphs()
    got = car.generate(5, generator=torch.Generator().manual_seed(2))
    want = ar.generate(5, generator=torch.Generator().manual_seed(2), compile=False)
    assert torch.equal(got, want) and len(got.unique()) > 3
    assert graphs() - before == 1  # 16 steps, one graph
    assert torch.equal(car.generate(5, generator=torch.Generator().manual_seed(2)), got)
    assert graphs() - before == 1  # a second run reuses it
    with torch.no_grad():
        for model in (ar, car):
            model.output_layer.linear.weight.mul_(-2.0)  # an optimizer's in-place step
    new = car.generate(5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(new, ar.generate(5, generator=torch.Generator().manual_seed(2)))
    assert not torch.equal(new, got)
    with pytest.raises(ValueError, match="compile=True needs cache=True"):
        ar.generate(2, compile=True, cache=False)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile-text")
    (root / "train.txt").write_text("\n".join(corpus_documents("austen", "train"))[:20_000])
    (root / "valid.txt").write_text("\n".join(corpus_documents("austen", "valid"))[:4_000])
    return root


def train_args(text, out, steps):
    return [
        "train",
        f"--data={text / 'train.txt'}",
        f"--valid_data={text / 'valid.txt'}",
        f"--out={out}",
        f"--steps={steps}",
        "--batch_size=4",
        "--block_size=16",
        "--warmup_steps=1",
        "--lr=1e-3",
        "--eval_every=100",
        "--eval_batches=1",
        "--save_every=3",
        "--log_every=1",
        "--ema=0.9",
        "--device=cpu",
        "--model.dim=32",
        "--model.n_heads=2",
        "--model.n_layers=1",
        "--model.cond_dim=16",
        "--model.dropout=0.0",  # inductor draws dropout from its own random numbers
        "--no-progress",
    ]


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_compiled_training_matches_eager_resumes_and_samples_the_same(
    text, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("EDLM_CACHE", str(tmp_path / "cache"))
    eager, comp = tmp_path / "eager", tmp_path / "compiled"
    assert main(train_args(text, eager, 3)) == 0
    assert main(train_args(text, comp, 3) + ["--compile"]) == 0
    first = losses(eager)
    assert len(first) == 3 and first[0] != first[-1]
    assert losses(comp) == pytest.approx(first, rel=1e-4, abs=1e-5)
    a, b = checkpoint.load(eager), checkpoint.load(comp)
    assert list(b["model"]) == list(a["model"]) and not any("_orig_mod" in k for k in b["model"])
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-3, atol=1e-4)
    checkpoint.load_model(comp, kind="denoiser")  # loads as any checkpoint does

    assert main(train_args(text, eager, 4) + ["--resume"]) == 0
    assert main(train_args(text, comp, 4) + ["--resume", "--compile"]) == 0
    assert losses(comp)[-1] == pytest.approx(losses(eager)[-1], rel=1e-4, abs=1e-5)
    assert json.loads((comp / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4
    capsys.readouterr()

    def printed(argv):
        assert main(argv) == 0
        return capsys.readouterr().out

    sample = ["sample", "--denoiser", str(comp), "--steps", "4", "--num", "2", "--seed", "5"]
    plain, compiled = printed(sample), printed(sample + ["--compile"])
    assert '"compiled": true' in compiled and '"compiled": false' in plain
    assert compiled.split("--- stats")[0] == plain.split("--- stats")[0]  # the same samples

    sweep = ["sweep", "--denoiser", str(comp), "--methods", "mdlm", "--steps", "4", "--num", "2"]
    sweep += ["--batch-size", "2", "--judge", "none", "--no-progress"]
    rows = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        printed(sweep + ["--out", str(tmp_path / name)] + extra)
        lines = (tmp_path / name / "samples.jsonl").read_text().splitlines()
        rows[name] = [json.loads(line)["text"] for line in lines]
    assert len(rows["eager"]) == 2 and rows["compiled"] == rows["eager"]


@pytest.mark.slow
def test_compiled_energy_training_matches_eager(text, tmp_path, monkeypatch):
    """NCE: the energy's forward and its frozen proposal denoiser's, both compiled."""
    monkeypatch.setenv("EDLM_CACHE", str(tmp_path / "cache"))
    den = tmp_path / "denoiser"
    assert main(train_args(text, den, 2)) == 0
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        argv = train_args(text, tmp_path / name, 3) + ["--model", "energy", "--init-from", str(den)]
        assert main(argv + extra) == 0
        runs[name] = losses(tmp_path / name)
    assert len(runs["eager"]) == 3 and runs["eager"][0] != runs["eager"][-1]
    assert runs["compiled"] == pytest.approx(runs["eager"], rel=1e-5, abs=1e-6)
    assert list(checkpoint.load(tmp_path / "compiled")["model"]) == list(
        checkpoint.load(tmp_path / "eager")["model"]
    )


@pytest.mark.slow
def test_a_compiler_failure_is_one_line(tmp_path):
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), EDLM_CACHE=str(tmp_path))
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor")  # nothing cached to fall back on
    argv = ["sample", "--compile", "--steps", "2", "--num", "1", "--length", "32"]
    run = subprocess.run(
        [sys.executable, "-m", "edlm.cli", *argv],
        check=False,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "edlm sample: --compile failed: torch.compile of Denoiser.forward failed: "
    ), lines
    assert "C++ compiler" in lines[0]


def test_sweep_compile_reaches_the_ar_rows(tmp_path, monkeypatch):
    """`edlm sweep --compile` hands an `ar` row's model to compile_forwards too (which makes its
    generate compile the cached step: test_compiled_ar_generate_...). Recorded, not compiled."""
    import edlm.cli

    seen = []
    monkeypatch.setattr(edlm.cli, "compile_forwards", lambda m: seen.append(m) or m)
    argv = ["sweep", "--compile", "--methods", "ar", "--num", "1", "--batch-size", "1"]
    argv += ["--judge", "none", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert any(isinstance(m, ARModel) for m in seen) and any(isinstance(m, Denoiser) for m in seen)
