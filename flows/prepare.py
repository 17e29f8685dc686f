"""prepare: decode the data source once into uint8 images with fixed splits.

python -m flows.prepare --params params.yaml      ->  data/prepared/dataset.pt
                                                     (+ data/prepared/shards/ with data.format shards)
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from plumbing.caching import bind
from plumbing.cli import cli
from plumbing.log import progress
from plumbing.records import Publication, json_bytes
from plumbing.runtime import open_stage
from plumbing.shard_store import prune_shards, publish_shards, shard_locator
from plumbing.store import resolve
from tasks.prepare import prepare_data


@flow(name="prepare", flow_run_name="prepare-{params_path}", log_prints=False)
def prepare(
    params_path: str = "params.yaml", root: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    with open_stage("prepare", params_path, root, overrides, track=False) as st:
        out = bind(prepare_data, st.root, st.store_url)(str(st.root), st.cfg("data")["data"], st.store_url)
        # the data and the record every later stage verifies it against change together, or not at all
        record = {
            "sha256": out["ref"]["sha256"],
            "source": st.params.data.source,
            **{k: out[k] for k in ("train", "val", "test", "classes", "shape")},
        }
        where = st.paths.rel(st.paths.prepared)
        if out["format"] == "shards":
            record["format"] = "shards"
            record["shards"] = len(out["shards"])
            where += f" + {len(out['shards'])} {out['kind']} shards"
        # the shards first: a manifest is never published before the shards it names
        locate = shard_locator(st.paths, out["ref"])
        record_bytes = publish_shards(st.paths, out["shards"], locate)
        with Publication() as pub:
            pub.add_file(resolve(st.paths, out["ref"]), st.paths.prepared, out["ref"]["sha256"])
            pub.add_bytes(st.paths.prepared_record, json_bytes(record))
        prune_shards(st.paths, out["shards"])
        size = f", {_mib(record_bytes)} of shards" if out["shards"] else ""
        progress(
            f"[prepare] {st.params.data.source}: train {out['train']}, val {out['val']}, test {out['test']}, "
            f"{out['classes']} classes, images {'x'.join(map(str, out['shape']))}{size} -> {where}"
        )
        return out


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 10 * 2**20 else f"{n / 2**20:.2f} MiB"


if __name__ == "__main__":
    cli("prepare", "Decode the data source into prepared tensors.", lambda a, o: prepare(a.params, a.root, o))
