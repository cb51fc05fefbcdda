import fakeredis
import pytest

from common.errors import ConfigError
from common.groups import sources
from common.streams import SourceKeys, check_source, registry_key


def test_every_source_key_shares_one_hash_tag() -> None:
    keys = SourceKeys("vigil", "cam1")
    assert keys.frames == "vigil:{cam1}:frames"
    assert all("{cam1}" in k for k in keys.all())


def test_sources_lists_the_registered_names_sorted() -> None:
    """The registry is a set; readers get its names sorted, as text. (Code that merely calls Redis: fakeredis.)"""
    client = fakeredis.FakeRedis()
    client.sadd(registry_key("vigil"), "gate", "a.b-c", "dock")
    client.sadd(registry_key("other"), "elsewhere")
    assert sources(client, "vigil") == ["a.b-c", "dock", "gate"]


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "brace{"])
def test_bad_source_names_are_rejected(bad: str) -> None:
    with pytest.raises(ConfigError):
        check_source(bad)
