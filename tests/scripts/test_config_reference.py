"""scripts/config_reference.py reads every key of a YAML option file with the default YAML itself gives it."""

from __future__ import annotations

import importlib.util
import sys

import yaml

from tests.conftest import REPO

SPEC = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
assert SPEC and SPEC.loader
config_reference = importlib.util.module_from_spec(SPEC)
sys.modules["config_reference"] = config_reference
SPEC.loader.exec_module(config_reference)

TEXT = """\
# an option
steps:            # a block list
  - 1
  - 2
sizes: [1,        # a flow list over two lines
        2]
authors:          # a list of maps
  - name: someone
    email: a@b.c
window: {low: 1,  # a flow map over two lines
         high: 2}
after: 3          # the key after them
"""


def test_lists_and_flow_values_over_several_lines_are_one_key_each():
    keys = {k.name: k for k in config_reference.parse_keys(TEXT.splitlines())}
    # authors.email and window.high were keys of their own (no such override exists); lists were maps
    assert list(keys) == ["steps", "sizes", "authors", "window", "after"]
    parsed = yaml.safe_load(TEXT)
    for name, key in keys.items():
        assert yaml.safe_load(key.default) == parsed[name], name
    assert [keys[n].type for n in keys] == ["list", "list", "list", "map", "int"]
    assert keys["sizes"].meaning == "a flow list over two lines" and keys["after"].meaning == "the key after them"


def test_a_block_list_without_a_comment_is_reported_undocumented():
    keys = config_reference.parse_keys(["steps:", "  - 1", "  - 2"])
    assert [(k.name, k.meaning) for k in keys] == [("steps", "")]  # was skipped as a plain map, so never missing
