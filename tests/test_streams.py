import pytest

from common.errors import ConfigError
from common.streams import SourceKeys, check_source, source_of_stream


def test_every_source_key_shares_one_hash_tag() -> None:
    keys = SourceKeys("vigil", "cam1")
    assert keys.frames == "vigil:{cam1}:frames"
    assert all("{cam1}" in k for k in keys.all())


def test_source_of_stream_inverts_the_name() -> None:
    assert source_of_stream("vigil", SourceKeys("vigil", "a.b-c").frames) == "a.b-c"


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "brace{"])
def test_bad_source_names_are_rejected(bad: str) -> None:
    with pytest.raises(ConfigError):
        check_source(bad)
