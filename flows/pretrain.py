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
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow

from ice.files import sha256_file
from plumbing.artifacts import load_data
from plumbing.caching import bind
from plumbing.cli import cli
from plumbing.log import progress
from plumbing.paths import make_ref
from plumbing.records import Publication, json_bytes
from plumbing.registry import registered_name
from plumbing.runtime import Stage, open_stage
from plumbing.store import resolve, store_path
from plumbing.weights import WeightsError, as_checkpoint, check_weights, fetch_weights
from tasks.pretrain import finish_pretrain, import_pretrained, pretrain_epoch


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


def _import(st: Stage, data_ref: dict[str, str]) -> dict[str, Any]:
    """The pretrain stage's import branch: fetch, verify, check, copy into the store, evaluate."""
    uri = st.params.model.weights
    assert uri is not None
    want = st.params.model.weights_sha256
    st.paths.store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=st.paths.store, prefix=".weights-") as tmp:
        tracking = st.tracker.uri if st.tracker is not None else ""
        path, vouched = fetch_weights(uri, st.root, tracking, Path(tmp))
        source_sha = sha256_file(path)  # what model.weights_sha256 pins: the user's own file
        if want and source_sha != want:
            raise WeightsError(f"model.weights: {uri} has sha256 {source_sha}, model.weights_sha256 is {want}")
        if vouched and source_sha != vouched:
            raise WeightsError(f"model.weights: {uri} has sha256 {source_sha}, its registry tag says {vouched}")
        data = load_data(st.paths, data_ref)
        arch = st.params.model.arch
        path, kind = as_checkpoint(path, uri, arch, data.num_classes, data.in_channels, data.image_size, Path(tmp))
        sha = sha256_file(path)
        meta = check_weights(path, uri, arch, data.num_classes, data.in_channels)
        dst = store_path(st.paths, "pretrained", sha)
        if not dst.exists():
            part = Path(tmp) / "part.pt"
            shutil.copyfile(path, part)
            part.replace(dst)
    ref = make_ref(st.paths, dst, sha)
    st.inputs[uri] = source_sha  # the run's config/inputs.json names the weights it imported
    acc = bind(import_pretrained, st.root, st.store_url)(str(st.root), data_ref, ref, st.device_cfg())
    progress(
        f"[pretrain] imported {uri} (sha256 {sha[:12]}…): val acc {acc['val_acc']:.2f}%, test acc {acc['test_acc']:.2f}%"
    )
    source = f"imported from {uri}" + ("" if kind == "ice" else f" ({kind.replace('_', ' ')})")
    return {"ref": ref, **acc, "seconds": 0.0, "history": [], "source": source, "meta": meta}


@flow(name="pretrain", flow_run_name="pretrain-{params_path}")
def pretrain(
    params_path: str = "params.yaml", root: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    with open_stage("pretrain", params_path, root, overrides) as st:
        data_ref = st.require(st.paths.prepared, "prepare")
        out = _import(st, data_ref) if st.params.model.weights else _train(st, data_ref)
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
