import subprocess
import sys


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
