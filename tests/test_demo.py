"""The bundled checkpoints load as the models they claim to be, and `edlm demo` runs offline."""

import pytest

from edlm import checkpoint
from edlm.cli import main
from edlm.demo import bundled


@pytest.mark.parametrize("name,kind", [("denoiser-tiny", "denoiser"), ("ar-tiny", "ar"), ("energy-tiny", "energy")])
def test_bundled_checkpoints(name, kind):
    model, cfg = checkpoint.load_model(bundled(name))
    assert cfg.model == kind and cfg.model_config.vocab_size == 28 and not model.training


def test_demo_runs(capsys):
    argv = ["demo", "--steps", "8", "--num", "2", "--k", "2", "--prompt", "it is a truth", "--judge", "none"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for method in ("MDLM", "EDLM-AR (k=2)", "EDLM-NCE (k=2)"):
        assert f"=== {method}" in out
    assert "no judge" in out and out.count("  it is a truth") == 6


def test_sample_defaults_to_the_bundled_denoiser(capsys):
    assert main(["sample", "--steps", "4", "--num", "1", "--length", "32"]) == 0
    assert "--- stats" in capsys.readouterr().out


def test_unknown_bundled_name():
    with pytest.raises(ValueError, match="no bundled checkpoint 'huge'"):
        bundled("huge")
