"""pretrain: train the model on the prepared data, or import an existing one; register it as ``pretrained``.

    python -m flows.pretrain --params params.yaml     ->  models/pretrained.pt, reports/pretrain.json

Training runs one cached task per epoch. Each epoch saves the weights, the optimizer,
the lr schedule's position and the RNG states to the store, so a pre-training that is
killed and started again continues from its last finished epoch and ends with the same
bytes as one that never stopped.

With ``model.weights`` set (a checkpoint path or ``models:/<name>@<alias>``), nothing
is trained: the model is imported, checked against ``model.arch``, the data's classes
and channels (and ``model.weights_sha256`` when given), and evaluated.
"""

from __future__ import annotations

import math
import time
from typing import Any

from prefect import flow

from flows._runtime import Stage, cli, open_stage
from tasks.common import Publication, json_bytes, progress, resolve
from tasks.steps import bind, finish_pretrain, pretrain_epoch
from tasks.tracking import registered_name


def _train(st: Stage, data_ref: dict[str, str]) -> dict[str, Any]:
    cfg = st.cfg("seed", "model", "train")
    epoch_t = bind(pretrain_epoch, st.root, st.store_url)
    n = math.ceil(st.params.train.epochs)
    state_ref = None
    t0 = time.perf_counter()
    for epoch in range(1, n + 1):
        out = epoch_t(str(st.root), data_ref, state_ref, epoch, cfg)
        state_ref, rec = out["ref"], out["record"]
        if st.tracker is not None and st.run_id is not None:  # live: one point per epoch as it ends
            st.tracker.log_metrics(st.run_id, {k: v for k, v in rec.items() if k != "epoch"}, step=epoch)
        left = (time.perf_counter() - t0) / epoch * (n - epoch)
        progress(
            f"[pretrain] epoch {epoch}/{n}: loss {rec['train_loss']:.3f}, val acc {rec['val_acc']:.2f}%, "
            f"{rec['seconds']:.0f}s" + (f", about {left / 60:.0f} min left" if epoch < n else "")
        )
    assert state_ref is not None
    out = bind(finish_pretrain, st.root, st.store_url)(str(st.root), data_ref, state_ref, cfg)
    out["seconds"] = sum(r["seconds"] for r in out["history"])
    out["work_gmacs"] = sum(r["work"] for r in out["history"])
    out["source"] = "trained"
    return out


@flow(name="pretrain", flow_run_name="pretrain-{params_path}")
def pretrain(
    params_path: str = "params.yaml", root: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    with open_stage("pretrain", params_path, root, overrides) as st:
        data_ref = st.require(st.paths.prepared, "prepare")
        if st.params.model.weights:
            from tasks.weights import import_weights

            out = import_weights(st, data_ref)
        else:
            out = _train(st, data_ref)
        report = {
            "val_acc": out["val_acc"],
            "test_acc": out["test_acc"],
            "seconds": out["seconds"],
            "work_gmacs": out.get("work_gmacs"),  # None for an imported model: its training was not seen
            "epochs": len(out["history"]),
            "sha256": out["ref"]["sha256"],
            "source": out["source"],
        }
        with Publication() as pub:  # the model and its record change together, or not at all
            pub.add_file(resolve(st.paths, out["ref"]), st.paths.pretrained, out["ref"]["sha256"])
            pub.add_bytes(st.paths.pretrain_report, json_bytes(report))
        assert st.tracker is not None and st.run_id is not None
        st.tracker.log_metrics(
            st.run_id,
            {
                "final_val_acc": out["val_acc"],
                "test_acc": out["test_acc"],
                "pretrain_seconds": out["seconds"],
                **({"pretrain_work_gmacs": out["work_gmacs"]} if out.get("work_gmacs") is not None else {}),
            },
        )
        if st.params.tracking.register_models:
            name = registered_name(st.params.model.arch, st.params.data.source)
            version = st.tracker.log_model(
                st.run_id,
                st.paths.pretrained,
                name,
                "pretrained",
                f"pretrained ({out['source']}), val {out['val_acc']:.2f}%, test {out['test_acc']:.2f}%",
                {"stage": "pretrain", "val_acc": round(out["val_acc"], 2), "test_acc": round(out["test_acc"], 2)},
            )
            report["registered"] = f"{name} v{version} (alias pretrained)"
        progress(
            f"[pretrain] {out['source']}: val acc {out['val_acc']:.2f}%, test acc {out['test_acc']:.2f}% "
            f"in {out['seconds']:.1f}s -> {st.paths.rel(st.paths.pretrained)}"
        )
        return report


if __name__ == "__main__":
    cli(
        "pretrain",
        "Pre-train the model on the prepared data (or import model.weights).",
        lambda a, o: pretrain(a.params, a.root, o),
    )
