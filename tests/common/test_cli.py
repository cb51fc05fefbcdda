import json
import subprocess
import sys

import pytest

from common.cli import main


def test_config_prints_effective_settings_as_json(capsys) -> None:
    assert main(["config"]) == 0
    assert json.loads(capsys.readouterr().out)["namespace"] == "vigil"


def test_bad_setting_exits_with_config_code(monkeypatch, capsys) -> None:
    monkeypatch.setenv("VIGIL_WORKERS", "-1")
    assert main(["config"]) == 2
    assert "workers" in capsys.readouterr().err


def test_help_does_not_import_tensorflow() -> None:
    code = "import sys; from common.cli import main; main(['--help']); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


def test_the_heap_is_frozen_at_exit_not_before() -> None:
    """The interpreter's last collections skip the imported modules (``_quick_exit``); the freeze waits for exit,
    so that a long run's own garbage is still collected while it runs."""
    code = ("import atexit, gc; from common.cli import main; main(['config']); before = gc.get_freeze_count(); "
            "atexit._run_exitfuncs(); print(before, gc.get_freeze_count() > 1000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-2:] == ["0", "True"]


def test_openblas_starts_no_threads_unless_the_user_asks() -> None:
    """numpy and OpenCV each bundle OpenBLAS, whose threads spin ~0.1 s of CPU after import in every process:
    Vigil sets one thread, unless OPENBLAS_NUM_THREADS is set already."""
    import os

    code = ("import os; from common.cli import main; main(['config']); import numpy, cv2; "
            "print(os.environ['OPENBLAS_NUM_THREADS'], len(os.listdir('/proc/self/task')))")

    def run(**env: str) -> list[str]:
        base = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**base, **env}).stdout.split()[-2:]

    (ours, threads), (theirs, more) = run(), run(OPENBLAS_NUM_THREADS="3")
    assert (ours, theirs) == ("1", "3")
    assert int(threads) < int(more)


def test_config_redacts_the_broker_password(monkeypatch, capsys) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://vigil:s3cret@10.0.0.5:6379/0")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and json.loads(out)["redis_url"] == "redis://***@10.0.0.5:6379/0"


def test_every_and_fps_are_mutually_exclusive(tmp_path, capsys) -> None:
    video = tmp_path / "v.avi"
    video.write_bytes(b"")
    assert main(["produce", "file", str(video), "--every", "5", "--fps", "2"]) == 2
    err = capsys.readouterr().err
    assert "--every" in err and "--fps" in err


def test_malformed_config_file_exits_with_config_code(tmp_path, capsys) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("workers = [\n")
    assert main(["--config", str(cfg), "config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config file") and "bad.toml is not valid TOML at line 1" in err
    assert "Traceback" not in err


def test_bundle_is_a_global_option(tmp_path, capsys) -> None:
    """--bundle goes before the command, for every command (README and the errors name it): a file where a
    bundle directory belongs is refused with exit 4."""
    assert main(["--bundle", str(tmp_path), "config"]) == 0
    assert json.loads(capsys.readouterr().out)["bundle"] == str(tmp_path)
    not_a_dir = tmp_path / "model.tflite"
    not_a_dir.write_bytes(b"")
    assert main(["--bundle", str(not_a_dir), "work", "--burst"]) == 4
    assert "is a file, not a directory" in capsys.readouterr().err


def test_model_training_numbers_are_checked_before_anything_runs(tmp_path, capsys) -> None:
    for flag, value in (("--epochs", "0"), ("--batch-size", "0"), ("--width", "0"), ("--lr", "-1")):
        assert main(["model", "train", flag, value, "--out", str(tmp_path / "run")]) == 2
        assert flag in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_model_options_an_architecture_would_ignore_are_refused(tmp_path, capsys) -> None:
    """An option the architecture would ignore (--width on baseline-cnn, --weights on a non-keras one) is refused
    with exit 2, before any run directory is written, rather than recorded in config.json as if it took effect."""
    import pytest

    for args, said in ((["--arch", "baseline-cnn", "--width", "0.5"], "--width: not used by --arch baseline-cnn"),
                       (["--arch", "vgg-bn", "--weights", str(tmp_path / "w.h5")], "--weights: not used by")):
        code = main(["model", "train", *args, "--epochs", "1", "--limit", "64", "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err
        if code == 3:
            pytest.skip(f"no Fashion-MNIST here: {err}")
        assert code == 2 and said in err, err
    assert not (tmp_path / "run").exists()


def test_read_only_commands_without_a_broker_exit_5_instead_of_reading_an_empty_one(monkeypatch, capsys) -> None:
    """Without a broker, `vigil status`, `results` and `streams` exit 5, saying there is no broker to read from,
    instead of starting a private one (~4 s) and reading it empty: to a script, "no sources" and "no broker"
    must differ."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr("common.embedded.shared_broker", lambda: None)
    for args in (["status"], ["status", "--json"], ["results", "export"], ["results", "summary"], ["streams"],
                 ["results", "tail", "--max", "1"]):
        assert main(args) == 5, args
        err = capsys.readouterr().err
        assert "no broker to read from" in err and "vigil broker" in err


def test_a_broken_pipe_other_than_stdout_is_not_success() -> None:
    """Only stdout's reader going away (| head) ends a command with 0; another pipe breaking is a failure."""
    code = ("import click, sys; from common.cli import cli, main\n"
            "@cli.command('boom')\n"
            "def boom():\n"
            "    raise BrokenPipeError(32, 'Broken pipe')\n"
            "sys.exit(main(['boom']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode not in (0, None)
