"""``--set KEY=VALUE``: one parser for the CLI and the benchmarks (``ice.config.parse_sets``)."""

from __future__ import annotations

import pytest

from ice.config import ParamsError, parse_sets


def test_values_are_parsed_as_params_yaml():
    assert parse_sets(["prune.ratio=0.7", "prune.methods=[ice, agp]", "ice.autotune.enabled=false", "a.b=x=y"]) == {
        "prune.ratio": 0.7,
        "prune.methods": ["ice", "agp"],
        "ice.autotune.enabled": False,
        "a.b": "x=y",
    }


@pytest.mark.parametrize(("item", "says"), [("prune.ratio", "expected KEY=VALUE"), ("=0.5", "expected KEY=VALUE")])
def test_an_item_without_a_key_is_refused_in_one_line(item, says):
    with pytest.raises(ParamsError, match=says) as err:
        parse_sets([item])
    assert "\n" not in str(err.value)


def test_a_yaml_tag_is_refused():
    with pytest.raises(ParamsError, match="--set prune.ratio"):
        parse_sets(["prune.ratio=!!python/object:os.system x"])
