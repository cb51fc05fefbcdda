import json
import subprocess
import sys

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
