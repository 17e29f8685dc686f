"""dvc.yaml and plumbing.stages describe the same graph: a stage added, rewired or given a new
output in one and not the other fails here."""

from pathlib import Path

import yaml

from plumbing.paths import Paths
from plumbing.records import recorded_sha
from plumbing.stages import STAGES, outputs, record_of, recorded_inputs

ROOT = Path(__file__).resolve().parents[2]
M = "somemethod"


def _dvc_stages() -> dict[str, dict]:
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, body in raw.items():
        body = body.get("do", body)
        files = []
        for key in ("outs", "metrics", "plots"):
            for entry in body.get(key, []):
                files.append(next(iter(entry)) if isinstance(entry, dict) else entry)
        deps = [d for d in body.get("deps", [])]
        out[name] = {
            "outs": [f.replace("${item}", M) for f in files],
            "deps": [d.replace("${item}", M) for d in deps],
            "foreach": "foreach" in raw[name],
        }
    return out


def _covers(outs: list[str], rel: str) -> bool:
    return any(rel == o or rel.startswith(o.rstrip("/") + "/") for o in outs)


def test_dvc_yaml_and_the_stage_table_agree():
    paths = Paths(ROOT)
    dvc = _dvc_stages()
    assert set(dvc) == {s.name for s in STAGES}
    for s in STAGES:
        assert dvc[s.name]["foreach"] == s.per_method, s.name
        ours = [paths.rel(p) for p in outputs(s.name, paths, M)]
        assert all(_covers(dvc[s.name]["outs"], r) for r in ours), (s.name, ours, dvc[s.name]["outs"])
        assert all(any(_covers([o], r) or _covers([r], o) for r in ours) for o in dvc[s.name]["outs"]), s.name
        # upstream: the stages whose outputs dvc.yaml lists among the deps
        producers = set()
        for dep in dvc[s.name]["deps"]:
            for other in STAGES:
                theirs = [paths.rel(p) for p in outputs(other.name, paths, M)]
                if other.name != s.name and any(_covers([dep], t) or _covers([t], dep) for t in theirs):
                    producers.add(other.name)
        assert producers == set(s.upstream), (s.name, producers, s.upstream)


def test_the_checks_derive_from_the_table(tmp_path):
    paths = Paths(tmp_path)
    assert record_of(paths, paths.pruned("ice")) == paths.prune_report("ice")
    assert record_of(paths, paths.pretrained) == paths.pretrain_report
    assert record_of(paths, paths.autotune) is None
    paths.prune_report("ice").parent.mkdir(parents=True)
    paths.prune_report("ice").write_text('{"sha256": "abc"}')
    assert recorded_sha(paths, paths.pruned("ice")) == ("abc", paths.prune_report("ice"))


def test_recorded_inputs_are_each_upstream_record_with_the_command_that_makes_it(tmp_path):
    p = Paths(tmp_path)
    assert recorded_inputs("prune", p, ["ice"]) == [(p.prepared, "prepare"), (p.pretrained, "pretrain")]
    assert recorded_inputs("evaluate", p, ["ice", "agp"]) == [
        (p.prepared, "prepare"),
        (p.pretrained, "pretrain"),
        (p.pruned("ice"), "prune --method ice"),
        (p.pruned("agp"), "prune --method agp"),
    ]
    assert recorded_inputs("prepare", p, ["ice"]) == [] and recorded_inputs("pipeline", p, ["ice"]) == []
