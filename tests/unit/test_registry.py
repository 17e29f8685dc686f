"""The method registry is the one list of methods, and method_inputs the one answer to
"what does this method read" for DVC and the task cache keys alike; the criterion registry
(ice.pruning.importance.CRITERIA) is the one place a criterion is described, and no other
module names one."""

import ast
import re
from pathlib import Path

import pytest

from ice.config import parse_params
from ice.methods.registry import METHODS, SPECS, STEPWISE, TRAINING_METHODS, method_inputs, spec

ROOT = Path(__file__).resolve().parents[2]


def test_every_method_has_exactly_one_spec():
    assert set(SPECS) == set(METHODS)
    assert set(STEPWISE) | set(TRAINING_METHODS) == set(METHODS)
    assert not set(STEPWISE) & set(TRAINING_METHODS)
    with pytest.raises(ValueError, match="unknown method 'nope'; choose one of ice, iterative"):
        spec("nope")


def test_method_inputs_name_only_what_each_method_reads():
    params = parse_params({"prune": {"methods": ["ice", "iterative", "one_cycle"]}})
    ice, iterative, one_cycle = (method_inputs(params, m) for m in ("ice", "iterative", "one_cycle"))
    assert set(iterative) == {"seed", "prune", "train"} and "methods" not in iterative["prune"]
    assert set(iterative["train"]) == {"device", "channels_last", "amp"}  # pre-training keys stay out of its keys
    assert set(ice) == {"seed", "prune", "train", "ice"}
    assert set(one_cycle) == {"seed", "prune", "train", "schedule", "model"}  # from scratch: a whole training run
    assert one_cycle["train"]["epochs"] == params.train.epochs
    pretrained = parse_params({"schedule": {"init": "pretrained"}})
    assert set(method_inputs(pretrained, "one_cycle")) == {"seed", "prune", "train", "schedule"}


def _string_dispatch(path: Path, root: Path = ROOT) -> list[str]:
    """Comparisons of a name containing 'method' with a string literal (==, !=, in, not in)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        text = ast.unparse(node.left)
        literals = [c for c in node.comparators if isinstance(c, ast.Constant | ast.Tuple | ast.List | ast.Set)]
        if re.search(r"(^|\.)method$|\[.method.\]$", text) and literals:
            found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_string_dispatch_on_method_names_outside_the_registry():
    files = [p for pkg in ("ice", "plumbing", "tasks", "flows", "scripts") for p in (ROOT / pkg).rglob("*.py")]
    found = [hit for p in files if p.name != "registry.py" for hit in _string_dispatch(p)]
    assert not found, "dispatch through ice.methods.registry.spec instead:\n" + "\n".join(found)


def test_the_dispatch_check_can_fail(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(
        "def f(method, state, args):\n"
        "    if method == 'ice' or state['method'] in ('iterative', 'prune_once') or args.method != 'agp':\n"
        "        return spec(method).finetune == 'decide'\n"
    )
    hits = [h.split(": ", 1)[1] for h in _string_dispatch(planted, tmp_path)]
    assert hits == ["method == 'ice'", "state['method'] in ('iterative', 'prune_once')", "args.method != 'agp'"]


# ----------------------------------------------------------------------------- criteria
CRITERION_HOMES = {"ice/names.py", "ice/pruning/importance.py"}


def _criterion_names_used(path: Path, root: Path = ROOT) -> list[str]:
    """String constants equal to a criterion's name (a dispatch, a default, a list of them)."""
    from ice.names import CRITERION_NAMES

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and node.value in CRITERION_NAMES:
            found.append(f"{path.relative_to(root)}:{node.lineno}: {node.value!r}")
    return found


def test_every_criterion_has_one_spec_and_the_params_take_exactly_those():
    from ice.names import CRITERION_NAMES
    from ice.pruning.importance import CRITERIA, criterion_spec

    assert tuple(CRITERIA) == CRITERION_NAMES
    for name in CRITERION_NAMES:
        assert parse_params({"prune": {"criterion": name}}).prune.criterion == name
        spec_ = criterion_spec(name)
        assert spec_.freeze_trial == (not spec_.needs_data)
    with pytest.raises(ValueError, match="prune.criterion = 'nope' is not allowed; allowed: 'l1'"):
        parse_params({"prune": {"criterion": "nope"}})
    with pytest.raises(ValueError, match="unknown criterion 'nope'; choose one of l1, l2"):
        criterion_spec("nope")


def test_no_criterion_is_named_outside_its_registry():
    """A new criterion is its name in ice/names.py and its CriterionSpec in importance.py; code
    elsewhere asks the spec (needs_data, passes, group, freeze_trial), never compares names."""
    files = [p for pkg in ("ice", "plumbing", "tasks", "flows", "scripts") for p in (ROOT / pkg).rglob("*.py")]
    found = [
        hit for p in files if p.relative_to(ROOT).as_posix() not in CRITERION_HOMES for hit in _criterion_names_used(p)
    ]
    assert not found, "ask ice.pruning.importance.criterion_spec instead:\n" + "\n".join(found)


def test_the_criterion_check_can_fail(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(
        "def f(params):\n"
        "    crit = params.criterion if params.criterion in ('l1', 'l2') else 'l1'\n"
        "    return crit == 'taylor'\n"
    )
    hits = sorted(h.split(": ", 1)[1] for h in _criterion_names_used(planted, tmp_path))
    assert hits == ["'l1'", "'l1'", "'l2'", "'taylor'"]
