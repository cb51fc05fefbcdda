from pathlib import Path

import pytest

from common.errors import ConfigError
from common.settings import load_settings


def test_env_prefix_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_MAX_BATCH", "7")
    assert load_settings().max_batch == 7


def test_flags_override_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_MAX_BATCH", "7")
    cfg = tmp_path / "vigil.toml"
    cfg.write_text("[vigil]\nmax_batch = 9\nmax_wait_ms = 5\n")
    s = load_settings(cfg, max_batch=11)
    assert (s.max_batch, s.max_wait_ms) == (11, 5)


def test_invalid_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_MAX_BATCH", "0")
    with pytest.raises(ConfigError, match="max_batch"):
        load_settings()


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_unknown_key_in_file_is_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("max_bach: 3\n")
    with pytest.raises(ConfigError, match="max_bach"):
        load_settings(cfg)


def test_malformed_toml_names_the_file_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("max_batch = 4\nworkers = [\n")
    with pytest.raises(ConfigError, match=r"bad\.toml is not valid TOML at line 2 .*Fix the syntax"):
        load_settings(cfg)
    cfg.write_text("max_batch = = 4\n")
    with pytest.raises(ConfigError, match=r"not valid TOML at line 1, column 13: Invalid value"):
        load_settings(cfg)


def test_malformed_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("max_batch: 4\nworkers: [2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML at line 3, column 1: .*Fix the syntax"):
        load_settings(cfg)
