"""The command line rejects bad input with one clear line, exit code 2, nothing written."""

import os
from pathlib import Path

import pytest

from w2s_ray.cli import main

BAD_RUNS = [
    (["--dataset", "no-such-set"], ["--dataset", "no-such-set", "allowed", "vader"]),
    (["--weak", "no-such-model"], ["--weak", "no-such-model", "allowed", "minilm-l3"]),
    (["--strong", "nope"], ["--strong", "nope", "allowed"]),
    (["--loss", "logconf", "--alpha-max", "1.5"], ["--alpha-max", "1.5", "[0, 1]"]),
    (["--loss", "logconf", "--alpha-max", "-0.1"], ["--alpha-max", "-0.1", "[0, 1]"]),
    (["--warmup-frac", "2"], ["--warmup-frac", "[0, 1]"]),
    (["--weak", "/no/such/dir"], ["--weak", "/no/such/dir", "does not exist"]),
    (["--epochs", "0"], ["--epochs", "positive"]),
    (["--n-test", "-5"], ["--n-test", "positive"]),
    (["--n-weak", "500000"], ["--split", "rows"]),
]


@pytest.mark.parametrize("args,expected", BAD_RUNS)
def test_bad_run_input_is_one_line_exit_2_nothing_written(args, expected, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", "--out", str(out), *args])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("w2s-ray run: error: ")
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert captured.out == ""
    assert not out.exists()


def test_bad_choice_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--loss", "mse"])
    assert e.value.code == 2
    assert "invalid choice: 'mse'" in capsys.readouterr().err


def test_listing_commands(capsys):
    assert main(["datasets"]) == 0
    assert "vader" in capsys.readouterr().out
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "minilm-l3" in out and "minilm-l6" in out


def test_model_dir_without_config_is_rejected(tmp_path: Path, capsys):
    empty = tmp_path / "model"
    empty.mkdir()
    assert main(["run", "--out", str(tmp_path / "out"), "--weak", str(empty)]) == 2
    assert "no config.json" in capsys.readouterr().err


@pytest.mark.parametrize("args,expected", [
    (["--lr", "2"], "--lr: 2.0 is outside (0, 1)"),
    (["--lora-r", "-1"], "--lora-r: -1 must be >= 0"),
    (["--max-concurrent", "0"], "--max-concurrent: 0 must be positive"),
    (["--batch-size", "16", "--minibatch-size", "5"], "--minibatch-size: 5 must divide batch_size 16"),
])
def test_flags_are_checked_by_the_config_classes_and_named_as_flags(args, expected, tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "out"), *args]) == 2
    assert capsys.readouterr().err == f"w2s-ray run: error: {expected}\n"
    assert not (tmp_path / "out").exists()


def test_setup_with_the_registry_unreachable_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """A fresh machine whose package registry cannot be reached: one error line naming the package, no traceback."""
    for key, value in {"W2S_RAY_HOME": str(tmp_path / "home"), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                       "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "", "PIP_NO_INDEX": "",
                       "PIP_CONFIG_FILE": os.devnull, "PIP_DEFAULT_TIMEOUT": "5", "PIP_RETRIES": "0"}.items():
        monkeypatch.setenv(key, value)
    assert main(["setup"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("w2s-ray setup: error: ")
    assert "vaderSentiment==3.3.2" in err[0] and "use a local" in err[0]
    assert not (tmp_path / "home" / "sources" / "vader").exists() or not any(
        p.is_file() and not p.name.startswith(".") for p in (tmp_path / "home" / "sources" / "vader").iterdir())
