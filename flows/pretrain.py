"""pretrain: train the model on the prepared data; register it as the ``pretrained`` version.

    python -m flows.pretrain --params params.yaml     ->  models/pretrained.pt, reports/pretrain.json
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._runtime import cli, open_stage, require
from tasks.common import progress, publish, resolve, write_json
from tasks.steps import bind, load_model, pretrain_model
from tasks.tracking import registered_name


@flow(name="pretrain")
def pretrain(params_path: str = "params.yaml", root: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    with open_stage("pretrain", params_path, root, overrides) as st:
        data_ref = require(st.paths, st.paths.prepared, "prepare")
        out = bind(pretrain_model, st.root)(str(st.root), data_ref, st.cfg("seed", "model", "train"))
        publish(resolve(st.paths, out["ref"]), st.paths.pretrained)
        report = {"val_acc": out["val_acc"], "seconds": out["seconds"], "epochs": len(out["history"]), "sha256": out["ref"]["sha256"]}
        write_json(st.paths.pretrain_report, report)
        assert st.tracker is not None and st.run_id is not None
        for rec in out["history"]:
            st.tracker.log_metrics(st.run_id, {k: v for k, v in rec.items() if k != "epoch"}, step=rec["epoch"])
        st.tracker.log_metrics(st.run_id, {"final_val_acc": out["val_acc"], "pretrain_seconds": out["seconds"]})
        if st.params.tracking.register_models:
            name = registered_name(st.params.model.arch, st.params.data.source)
            model = load_model(st.paths, out["ref"], "cpu")
            version = st.tracker.log_model(st.run_id, model, name, "pretrained", f"pretrained, val {out['val_acc']:.2f}%")
            report["registered"] = f"{name} v{version} (alias pretrained)"
        progress(f"[pretrain] val acc {out['val_acc']:.2f}% in {out['seconds']:.1f}s -> {st.paths.rel(st.paths.pretrained)}")
        return report


if __name__ == "__main__":
    cli("pretrain", "Pre-train the model on the prepared data.", lambda a, o: pretrain(a.params, a.root, o))
