"""export: ship a pruned model as ONNX, TorchScript or safetensors, with what a deployer needs beside it.

    python -m scripts.export --params params.yaml --method ice --format onnx
        ->  models/export/ice.onnx and models/export/ice.onnx.json

The JSON sidecar names the input (shape ``[batch, C, H, W]``, float32, normalised with the
recorded mean and std), the class names, the architecture, the params and MACs, and the
file's sha256 (for safetensors also the spec and per-layer widths that rebuild the pruned
architecture, ``ice.models.rebuild``). The exported file is checked before it is kept: ONNX with onnxruntime,
TorchScript by loading it back, safetensors by loading its tensors into the rebuilt model, against PyTorch's outputs on real test images; the
largest absolute difference is printed and recorded. The export is written atomically,
so a failed check leaves nothing behind.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ice.checkpoint import CheckpointError, load_checkpoint
from ice.files import atomic_write_bytes, sha256_file
from ice.metrics import count_macs, count_params
from ice.models import layer_widths
from plumbing.log import prog

FORMATS = ("onnx", "torchscript", "safetensors")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "safetensors": ".safetensors"}
TOLERANCE = 1e-3  # max abs logit difference accepted between PyTorch and the exported file


class ExportError(RuntimeError):
    pass


def _onnx_bytes(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    import warnings

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
        return path.read_bytes()


def _torchscript_bytes(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    traced = torch.jit.trace(model, example, check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return buf.getvalue()


def _safetensors_bytes(model: torch.nn.Module) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def run_exported(data: bytes, fmt: str, x: torch.Tensor, spec: Any = None) -> torch.Tensor:
    """Outputs of an exported file on ``x``: onnxruntime for ONNX, ``torch.jit.load`` for
    TorchScript, and for safetensors its tensors loaded into the architecture rebuilt from
    ``spec`` (the sidecar's ``spec`` and ``widths``)."""
    if fmt == "safetensors":
        from safetensors.torch import load

        from ice.models import adopt_shapes, rebuild

        state = load(data)
        model = rebuild(spec["spec"], spec["widths"])
        adopt_shapes(model, state)
        model.load_state_dict(state, strict=True)
        with torch.no_grad():
            return model.eval()(x)
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])
    loaded = torch.jit.load(io.BytesIO(data))
    with torch.no_grad():
        return loaded(x)


def export_model(
    checkpoint: Path,
    fmt: str,
    out: Path,
    *,
    classes: list[str],
    mean: list[float],
    std: list[float],
    check_images: torch.Tensor,
) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out`` and its sidecar ``out`` + ``.json``; return the sidecar."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not allowed; allowed: {', '.join(FORMATS)}")
    model, meta = load_checkpoint(checkpoint)
    model.eval()
    shape = [int(v) for v in check_images.shape[1:]]
    example = check_images[:2]
    with torch.no_grad():
        ref = model(check_images)
    rebuild_spec = {"spec": dict(model.ice_spec), "widths": layer_widths(model)}  # type: ignore[arg-type]
    if fmt == "safetensors":
        data = _safetensors_bytes(model)
    else:
        data = _onnx_bytes(model, example) if fmt == "onnx" else _torchscript_bytes(model, example)
    got = run_exported(data, fmt, check_images, rebuild_spec)
    diff = float((got - ref).abs().max())
    agree = float((got.argmax(1) == ref.argmax(1)).float().mean())
    if diff > TOLERANCE:
        raise ExportError(f"{fmt} export differs from PyTorch by {diff:.2e} (> {TOLERANCE:g}); nothing written")
    sidecar: dict[str, Any] = {
        "format": fmt,
        "file": out.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "source_checkpoint": str(checkpoint),
        "source_sha256": sha256_file(checkpoint),
        "arch": model.ice_spec["arch"],  # type: ignore[index]
        "method": meta.get("method"),
        "input": {
            "name": "images",
            "shape": ["batch", *shape],
            "dtype": "float32",
            "normalise": "x / 255, then (x - mean) / std",
            "mean": mean,
            "std": std,
        },
        "output": {"name": "logits", "shape": ["batch", len(classes)]},
        "classes": classes,
        "params": count_params(model),
        "macs": count_macs(model, (1, *shape)),
        "check": {"images": int(check_images.shape[0]), "max_abs_diff": diff, "argmax_agreement": agree},
    }
    if fmt == "safetensors":  # tensors alone: the sidecar says how to rebuild the pruned shapes
        sidecar.update(rebuild_spec)
        sidecar["input"].pop("name")
        sidecar["output"].pop("name")
    atomic_write_bytes(out, data)
    atomic_write_bytes(out.with_name(out.name + ".json"), (json.dumps(sidecar, indent=2) + "\n").encode())
    return sidecar


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog("python -m scripts.export"), description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml", help="params file (for the method list and the data)")
    ap.add_argument("--method", required=True, help="a method of params.yaml, or 'pretrained'")
    ap.add_argument("--format", default="onnx", help=f"one of {', '.join(FORMATS)}")
    ap.add_argument("--out", default=None, help="output file (default models/export/<method>.<onnx|ts|safetensors>)")
    ap.add_argument("--root", default=".", help="project root")
    args = ap.parse_args(argv)
    try:
        return _main(args)
    except (ExportError, CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from ice.config import load_params
    from ice.data import load_prepared, normalize
    from plumbing.paths import Paths

    root = Path(args.root)
    params = load_params(root / args.params)
    if args.format not in FORMATS:
        raise ExportError(f"--format {args.format!r} is not allowed; allowed: {', '.join(FORMATS)}")
    paths = Paths(root)
    models = {"pretrained": paths.pretrained} | {m: paths.pruned(m) for m in params.prune.methods}
    if args.method not in models:
        raise ExportError(f"--method {args.method!r} is not allowed; allowed: {', '.join(models)}")
    ckpt = models[args.method]
    if not ckpt.exists():
        raise ExportError(f"{ckpt} does not exist; run `dvc repro` (or make run) first")
    data = load_prepared(paths.prepared)
    x = normalize(data.test.read(torch.arange(min(64, len(data.test)))), data.mean, data.std)
    out = Path(args.out) if args.out else paths.export(args.method, SUFFIX[args.format])
    side = export_model(
        ckpt, args.format, out, classes=list(data.classes), mean=list(data.mean), std=list(data.std), check_images=x
    )
    print(
        f"{out}: {args.format}, input {side['input']['shape']}, {len(side['classes'])} classes, "
        f"{side['params']:,} params; max abs diff vs PyTorch {side['check']['max_abs_diff']:.2e} "
        f"on {side['check']['images']} test images, argmax agreement {side['check']['argmax_agreement']:.0%}"
    )
    print(f"{out}.json: input shape, normalisation, class names, sha256")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
