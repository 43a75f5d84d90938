"""`edlm sweep`: the grid, the measurements of each cell, the CSV / PNG / JSONL it writes, and the
speed-at-equal-quality arithmetic."""

import importlib.util
import json
import math

import pytest
import torch

from edlm import checkpoint
from edlm.checkpoint import bundled
from edlm.cli import main
from edlm.models import AREnergy
from edlm.sampling import sample
from edlm.sweep import (
    FIELDS,
    Method,
    first_reach,
    grid,
    read_csv,
    run_sweep,
    series,
    speed_at_equal_quality,
    write_csv,
)


@pytest.fixture(scope="module")
def models():
    denoiser, _ = checkpoint.load_model(bundled("denoiser-tiny"))
    ar, _ = checkpoint.load_model(bundled("ar-tiny"))
    return denoiser, AREnergy(ar, denoiser.mask_id, carry_over=True)


def test_grid_runs_mdlm_once_per_step_count():
    cells = grid([Method("MDLM"), Method("E", energy=object())], [8, 16], [2, 4], [0.5, 1.0])
    assert [(c[0].name, c[1], c[2], c[3]) for c in cells[:2]] == [
        ("MDLM", 8, 1, 0.0),
        ("MDLM", 16, 1, 0.0),
    ]
    assert len(cells) == 2 + 2 * 2 * 2
    assert {(c[1], c[2], c[3]) for c in cells[2:]} == {
        (n, k, w) for n in (8, 16) for k in (2, 4) for w in (0.5, 1.0)
    }


def test_run_sweep_measures_each_cell(models, tmp_path):
    denoiser, energy = models
    samples = tmp_path / "s.jsonl"
    with open(samples, "w") as f:
        rows = run_sweep(
            denoiser,
            [Method("MDLM"), Method("EDLM-AR", energy)],
            steps=[4, 8],
            ks=[1, 3],
            windows=[0.5],
            num_samples=3,
            batch_size=2,
            length=32,
            decode=lambda r: "".join(map(str, r)),
            seed=7,
            progress=False,
            samples_out=f,
        )
    assert len(rows) == 2 + 4 and all(set(FIELDS) <= set(r) for r in rows)
    by = {(r["method"], r["steps"], r["k"]): r for r in rows}
    for n in (4, 8):
        mdlm = by["MDLM", n, 1]
        assert mdlm["energy_calls"] == 0 and mdlm["is_steps"] == 0 and math.isnan(mdlm["mean_ess"])
        # two sampler calls (batches of 2 and 1), each at most one denoiser call per step
        assert 2 <= mdlm["denoiser_calls"] <= 2 * n
        assert math.isnan(mdlm["gen_ppl"]) and mdlm["seconds_per_sample"] > 0
        edlm = by["EDLM-AR", n, 3]
        assert edlm["energy_calls"] == edlm["is_steps"] > 0 and 1.0 <= edlm["mean_ess"] <= 3.0
        assert edlm["mean_sd_log_w"] > 0 and math.isfinite(edlm["mean_energy_gain"])
        assert math.isnan(mdlm["mean_sd_log_w"]) and math.isnan(mdlm["mean_energy_gain"])
    # one JSONL record per sample per cell; with k = 1 EDLM is MDLM draw for draw (same seed)
    recs = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(recs) == 6 * 3
    toks = {(r["method"], r["steps"], r["k"], r["index"]): r["tokens"] for r in recs}
    for n in (4, 8):
        for i in range(3):
            assert toks["EDLM-AR", n, 1, i] == toks["MDLM", n, 1, i]
    # the cell's samples are exactly what `sample` gives for that seed and batching
    g = torch.Generator().manual_seed(7)
    x = sample(denoiser, batch_size=2, length=32, mask_id=denoiser.mask_id, steps=8, generator=g)
    assert [toks["MDLM", 8, 1, i] for i in range(2)] == x.tolist()
    assert recs[0]["text"] == "".join(map(str, recs[0]["tokens"]))


def test_run_sweep_bad_input(models):
    denoiser, _ = models
    with pytest.raises(ValueError, match="steps and k must be >= 1"):
        run_sweep(denoiser, [Method("MDLM")], steps=[0], progress=False)
    with pytest.raises(ValueError, match="windows in"):
        run_sweep(denoiser, [Method("MDLM")], steps=[4], windows=[1.5], progress=False)
    with pytest.raises(ValueError, match="needs `decode`"):
        run_sweep(denoiser, [Method("MDLM")], steps=[4], judge=object(), progress=False)


def _row(method, steps, ppl, seconds, k=1, window=0.0):
    return {
        "method": method,
        "steps": steps,
        "k": k,
        "window": window,
        "num_samples": 4,
        "seed": 0,
        "gen_ppl": ppl,
        "judge_bpc": math.nan,
        "entropy": 4.0,
        "distinct_2": 0.5,
        "distinct_3": 0.8,
        "oracle_bpc": 2.7,
        "oracle_bpc_se": 0.01,
        "oracle_gap": 0.1,
        "unigram_entropy": 4.1,
        "bigram_entropy": 7.4,
        "denoiser_calls": steps,
        "energy_calls": 0,
        "is_steps": 0,
        "mean_ess": math.nan,
        "mean_sd_log_w": math.nan,
        "mean_energy_gain": math.nan,
        "seconds_per_sample": seconds,
    }


def test_first_reach_interpolates_in_log_steps_and_seconds():
    curve = [_row("M", 8, 100.0, 0.1), _row("M", 32, 60.0, 0.4), _row("M", 128, 40.0, 1.6)]
    # target 50 lies halfway from 60 to 40: halfway from 32 to 128 in log steps, i.e. 64
    hit = first_reach(curve, 50.0)
    assert hit["steps"] == pytest.approx(64.0) and hit["seconds"] == pytest.approx(0.8)
    assert hit["at_most"] is False
    # reached at the first point: the need is at most that
    assert first_reach(curve, 100.0) == {"steps": 8.0, "seconds": 0.1, "at_most": True}
    assert first_reach(curve, 39.0) is None
    assert first_reach([_row("M", 8, math.nan, 0.1)], 50.0) is None
    # the first crossing counts, even if the curve later goes back up
    bumpy = [_row("M", 8, 100.0, 0.1), _row("M", 16, 45.0, 0.2), _row("M", 32, 55.0, 0.4)]
    assert first_reach(bumpy, 50.0)["steps"] < 16.0


def test_speed_at_equal_quality_ratios():
    rows = [_row("MDLM", n, p, n / 100) for n, p in [(8, 100.0), (32, 60.0), (128, 40.0)]]
    rows += [
        _row("EDLM", n, p, n / 50, k=4, window=1.0) for n, p in [(8, 80.0), (32, 50.0), (128, 35.0)]
    ]
    out = {r["curve"]: r for r in speed_at_equal_quality(rows, 50.0)}
    assert set(out) == {"MDLM", "EDLM k=4 w=1"}
    assert out["MDLM"]["steps"] == pytest.approx(64.0) and out["MDLM"][
        "steps_ratio"
    ] == pytest.approx(1.0)
    e = out["EDLM k=4 w=1"]
    assert e["steps"] == pytest.approx(32.0) and e["steps_ratio"] == pytest.approx(2.0)
    # EDLM's steps cost twice the seconds here: equal speed in seconds
    assert e["seconds_ratio"] == pytest.approx(0.64 / 0.64)
    assert speed_at_equal_quality(rows, 10.0)[0]["steps"] is None


def test_csv_round_trip(tmp_path):
    rows = [_row("MDLM", 8, 12.5, 0.25), _row("EDLM-AR", 8, math.nan, 0.5, k=4, window=0.5)]
    write_csv(rows, tmp_path / "x.csv")
    back = read_csv(tmp_path / "x.csv")
    same = {
        k: (v == rows[0][k]) or (math.isnan(v) and math.isnan(rows[0][k]))
        for k, v in back[0].items()
    }
    assert set(back[0]) == set(rows[0]) and all(same.values()), same
    assert math.isnan(back[1]["gen_ppl"]) and back[1]["k"] == 4 and back[1]["window"] == 0.5
    assert list(series(back)) == ["MDLM", "EDLM-AR k=4 w=0.5"]


def test_sweep_command_writes_csv_png_and_samples(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--steps",
        "4,8",
        "--num",
        "2",
        "--k",
        "2",
        "--judge",
        "none",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    rows = read_csv(out / "sweep.csv")
    assert [(r["method"], r["steps"], r["k"]) for r in rows] == [
        ("MDLM", 4, 1),
        ("MDLM", 8, 1),
        ("EDLM-AR", 4, 2),
        ("EDLM-AR", 8, 2),
        ("EDLM-NCE", 4, 2),
        ("EDLM-NCE", 8, 2),
    ]
    recs = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 12 and all(len(r["text"]) == 256 for r in recs)
    printed = capsys.readouterr().out
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:  # the CSV and samples are still written, and the user is told why there is no plot
        assert not (out / "sweep.png").exists() and "needs matplotlib" in printed
    assert "no judge" in printed and "EDLM-NCE k=2 w=1" in printed


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--methods", "mdlm,gpt"], "unknown method 'gpt'"),
        (["--steps", "8,x"], "--steps must be a comma-separated list of int"),
        (["--k", ""], "--k is empty"),
        (["--window", "2"], "windows in \\[0, 1\\]"),
        (["--denoiser", "/no/such/ckpt"], "edlm sweep: "),
    ],
)
def test_sweep_command_bad_input(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        main(
            [
                "sweep",
                "--judge",
                "none",
                "--out",
                str(tmp_path),
                "--no-progress",
                "--num",
                "1",
                *argv,
            ]
        )


def test_oracle_suite_with_the_exact_denoiser(tmp_path, capsys):
    """`edlm sweep --suite oracle --denoiser oracle`: every sample scored exactly; the exact
    samples' row scores the source's entropy within its error; the table names H."""
    out = tmp_path / "o"
    code = main(
        [
            "sweep",
            "--suite",
            "oracle",
            "--denoiser",
            "oracle",
            "--methods",
            "mdlm,edlm-oracle,exact",
            "--steps",
            "2",
            "--k",
            "2",
            "--num",
            "4",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "entropy rate H = 2.5961" in text and "no judge" in text
    rows = {(r["method"], r["steps"]): r for r in read_csv(out / "sweep.csv")}
    assert set(rows) == {("MDLM", 2), ("EDLM-oracle", 2), ("exact", 256)}
    exact = rows[("exact", 256)]
    assert abs(exact["oracle_gap"]) < 4 * exact["oracle_bpc_se"]
    # two steps of a factorized sampler are far worse than the source
    assert rows[("MDLM", 2)]["oracle_gap"] > 0.5
    for r in rows.values():
        assert r["oracle_bpc_se"] > 0 and 3.5 < r["unigram_entropy"] < 4.7
        assert math.isnan(r["gen_ppl"])
