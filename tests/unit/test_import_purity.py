import os
import shutil
import subprocess
import sys
from pathlib import Path


def test_import_ice_loads_no_orchestration_packages():
    code = (
        "import sys, ice, ice.config, ice.data, ice.models, ice.pruning, ice.train, ice.checkpoint, ice.metrics\n"
        "bad = [m for m in ('prefect', 'mlflow', 'dvc', 'boto3', 'botocore') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"ice imported: {out.stdout}"


def test_import_ice_is_cheap_and_has_version():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, ice; print(ice.__version__, 'torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    version, torch_loaded = out.stdout.split()
    assert version
    assert torch_loaded == "False"


ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_architecture_contracts_hold():
    """The layers, ice's purity and no import cycles, as pyproject.toml's [tool.importlinter] states them."""
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "3 kept, 0 broken" in out.stdout


def test_a_planted_cycle_breaks_the_contracts(tmp_path):
    """The contracts can fail: in a copy of the project, ice.models.archs importing ice.checkpoint
    (which imports ice.models) and ice reaching for tasks are both caught."""
    for pkg in ("ice", "plumbing", "tasks", "flows", "scripts"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "ice" / "models" / "archs.py", "a") as f:
        f.write("\nfrom ice.checkpoint import load_checkpoint  # noqa: E402\nimport plumbing.store  # noqa: E402\n")
    out = _lint_imports(tmp_path)
    assert out.returncode != 0
    assert "0 kept, 3 broken" in out.stdout, out.stdout[-3000:]


PACKAGES = ("ice", "plumbing", "tasks", "flows", "scripts", "benchmarks")


def _private_imports(root: Path) -> list[str]:
    """Every ``from <project module> import _name`` under ``root``'s packages: a module's
    ``_private`` names are its own, so another module using one is a missing public name."""
    import ast

    found = []
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                    found += [
                        f"{f.relative_to(root)}:{node.lineno} imports {node.module}.{a.name}"
                        for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")
                    ]
    return found


def test_no_module_imports_another_modules_private_names(tmp_path):
    assert _private_imports(ROOT) == []
    # and the check can fail: a planted import of a private name is found
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "ice" / "sharded.py", "a") as f:
        f.write("\nfrom ice.data.sources import _load_digits  # noqa: E402\n")
    assert _private_imports(tmp_path) == [
        f"ice/sharded.py:{_lines(tmp_path / 'ice' / 'sharded.py')} imports ice.data.sources._load_digits"
    ]


def _lines(f: Path) -> int:
    return len(f.read_text().splitlines())
