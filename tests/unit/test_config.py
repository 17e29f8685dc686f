from pathlib import Path

import pytest

from ice.config import Params, ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_repo_params_file_loads():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.data.source == "digits"


def test_defaults_are_the_paper_grid():
    p = parse_params({})
    assert p.ice.autotune.grid["p"] == [0.1, 0.15, 0.2]
    assert p.ice.autotune.n_trials == 6
    assert p.prune.kd_temperature == 2.0


@pytest.mark.parametrize(
    "text, must_contain",
    [
        ("data:\n  source: mnist\n", ["data.source", "'mnist'", "digits"]),
        ("prune:\n  ratio: 1.5\n", ["prune.ratio", "1.5"]),
        ("prune:\n  ratoi: 0.5\n", ["prune.ratoi", "unknown key"]),
        ("model:\n  arch: resnet9000\n", ["model.arch", "resnet9000", "cifar_resnet56"]),
        ("ice:\n  reference: last\n", ["ice.reference", "'last'", "original"]),
        ("ice:\n  lr:\n    base: 0.001\n    delta: 0.002\n", ["ice.lr.delta", "0.002"]),
        ("data:\n  source: folder\n", ["data.root", "folder"]),
        ("ice:\n  autotune:\n    grid:\n      gamma: [1]\n", ["grid.gamma", "allowed"]),
        ("- just\n- a list\n", ["mapping"]),
        ("prune: [unclosed\n", ["not valid YAML", "line"]),
    ],
)
def test_bad_params_fail_with_one_line_message(tmp_path, text, must_contain):
    with pytest.raises(ParamsError) as info:
        load_params(write(tmp_path, text))
    msg = str(info.value)
    assert "\n" not in msg
    for part in must_contain:
        assert part in msg, msg


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="cannot be read"):
        load_params(tmp_path / "nope.yaml")


def test_torchvision_arch_is_accepted():
    assert parse_params({"model": {"arch": "tv:resnet18"}}).model.arch == "tv:resnet18"


def test_dotted_overrides_apply_before_validation(tmp_path):
    p = write(tmp_path, "data:\n  source: digits\n")
    params = load_params(p, {"data.source": "folder", "data.root": "x.tar", "prune.ratio": 0.7})
    assert params.data.source == "folder" and params.prune.ratio == 0.7
    with pytest.raises(ParamsError, match="prune.ratio"):
        load_params(p, {"prune.ratio": 2})


def test_shipped_params_files_validate():
    from pathlib import Path

    from ice.config import load_params

    root = Path(__file__).resolve().parents[2]
    files = [root / "params.yaml", *sorted((root / "params").glob("*.yaml"))]
    assert len(files) >= 4
    archs = {load_params(f).model.arch for f in files}
    assert {"cifar_resnet56", "cifar_resnet152"} <= archs  # every shipped file parses, the default and the presets


def test_params_yaml_spells_out_every_key_dvc_lists():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((root / "params.yaml").read_text())
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for key in body.get("params", []):
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"stage {name}: params.yaml has no {key}"
                node = node[part]


def test_shipped_params_files_spell_out_every_key():
    """A reader of a preset sees every setting it runs with (the search grid aside, which defaults to the paper's)."""
    from pathlib import Path

    import yaml

    from ice.config import Params

    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "grid" else {prefix + k}
        return out

    root = Path(__file__).resolve().parents[2]
    every = keys(Params().model_dump(mode="json")) - {"ice.autotune.grid"}
    for f in [root / "params.yaml", *sorted((root / "params").glob("*.yaml"))]:
        missing = every - keys(yaml.safe_load(f.read_text()))
        assert not missing, f"{f.name} does not spell out {sorted(missing)}"


# Where params.yaml (the digits default run) departs from ice.config's defaults (the paper's
# CIFAR settings), and why. A new difference, or one that goes away, fails the test below:
# defaults live in one place (ice.config) and every departure is a deliberate digits choice.
DIGITS_DEPARTURES = {
    "data.val_fraction": "digits has 1,797 images: 25% is 360 val images, one image 0.28 points",
    "model.arch": "ResNet-56's 27 small units are the regime ICE is for; ResNet-20's 9 steps cost 3-20 points each",
    "train.epochs": "pre-training the digits model to ~97% takes 30 epochs of 21 steps",
    "train.batch_size": "1,347 training images: batch 64 gives 21 steps an epoch",
    "train.augment": "8x8 digits: crops and mirror images hurt more than they help",
    "prune.batch_size": "the same 21 steps an epoch for the fine-tunes as for pre-training",
    "prune.augment": "8x8 digits: crops and mirror images hurt more than they help",
    "prune.finetune_epochs": "a digits epoch is 21 steps; 2 epochs restore accuracy so ICE can skip the next ones",
    "prune.methods": "the default run compares every method",
    "prune.target.tolerance": "the default run is target-driven (cost to target, issue 21)",
    "prune.target.check_every": "a check is a pass over 360 val images; every quarter epoch bounds their cost",
    "ice.lr.base": "on digits the paper's 0.001 decays to 0.0002 and stage 3 never recovers",
    "ice.autotune.enabled": "on digits a search costs more than it saves (benchmarks/README.md)",
    "ice.autotune.subset": "2% of digits is ~30 images; 10% keeps trials meaningful",
    "schedule.epochs": "15 keeps `make run` under 10 min (30: 11 min 42 s)",
}


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_params_yaml_departs_from_the_defaults_only_where_a_reason_is_pinned():
    root = Path(__file__).resolve().parents[2]
    defaults = _flat(parse_params({}).model_dump())
    digits = _flat(load_params(root / "params.yaml").model_dump())
    differ = {k for k in defaults.keys() | digits.keys() if defaults.get(k) != digits.get(k)}
    assert differ == set(DIGITS_DEPARTURES), (
        f"unexplained: {sorted(differ - set(DIGITS_DEPARTURES))}; no longer different: "
        f"{sorted(set(DIGITS_DEPARTURES) - differ)}"
    )


def test_amp_off_survives_yaml_rewrites():
    """`dvc exp run -S` writes params.yaml back with a bare `off`, which YAML 1.1 reads as false."""
    import yaml

    assert parse_params(yaml.safe_load("train:\n  amp: off\n")).train.amp == "off"
    with pytest.raises(ParamsError, match=r"train\.amp = True is not allowed; allowed: 'off', 'bf16' or 'fp16'"):
        parse_params({"train": {"amp": True}})


def test_a_file_read_again_is_validated_once_and_each_caller_gets_its_own_copy(tmp_path, monkeypatch):
    import ice.config as config

    p = write(tmp_path, "prune:\n  ratio: 0.5\n")
    calls = []
    real = config.parse_params
    monkeypatch.setattr(
        config, "parse_params", lambda raw, source=None: calls.append(source) or real(raw, source=source)
    )
    a = load_params(p, {"prune.ratio": 0.6})
    b = load_params(p, {"prune.ratio": 0.6})
    assert len(calls) == 1 and a == b and a is not b
    a.prune.ratio = 0.7  # one caller's change is not another's
    assert load_params(p, {"prune.ratio": 0.6}).prune.ratio == 0.6
    # other overrides, or an edited file, are validated anew
    assert load_params(p).prune.ratio == 0.5 and len(calls) == 2
    p.write_text("prune:\n  ratio: 0.4\n")
    assert load_params(p).prune.ratio == 0.4 and len(calls) == 3
    p.write_text("prune:\n  ratio: 2\n")
    with pytest.raises(ParamsError, match="prune.ratio"):
        load_params(p)
