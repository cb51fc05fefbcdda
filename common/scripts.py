"""Server-side Lua scripts: one ``.lua`` file per script in ``common/lua/``, loaded by name.

Each file opens with its KEYS/ARGV contract and what it returns. A line ``--! include NAME`` pulls in the helper
functions of ``NAME.lua`` (``entry_ids``: compare stream ids; ``ensure_group``: create a consumer group), which
are prepended to the script before it is sent: Redis scripts cannot load other scripts.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import redis
from redis.commands.core import Script

LUA_DIR = Path(__file__).with_name("lua")
_INCLUDE = re.compile(r"^--! include (\w+)$", re.M)


@functools.cache
def source(name: str) -> str:
    """The script ``name`` as sent to the server: its included helpers, then its own text."""
    text = (LUA_DIR / f"{name}.lua").read_text()
    helpers = [source(include) for include in _INCLUDE.findall(text)]
    return "".join(helpers) + text


def register(client: redis.Redis, name: str) -> Script:
    """``client.register_script`` for the script ``name`` (EVALSHA, loaded on first use)."""
    return client.register_script(source(name))
