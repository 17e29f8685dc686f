import subprocess
import sys

from ice._compat import import_torchvision


def test_torchvision_imports_and_builds_a_model():
    tv = import_torchvision()
    model = tv.models.get_model("resnet18", weights=None, num_classes=3)
    assert model.fc.out_features == 3


def test_shim_does_nothing_when_the_schemas_exist():
    # simulate a torchvision whose extension loaded: the op schemas are already defined
    code = (
        "import torch\n"
        "lib = torch.library.Library('torchvision', 'DEF')\n"
        "lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')\n"
        "lib.define('qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')\n"
        "from ice._compat import import_torchvision, shim_applied\n"
        "tv = import_torchvision()\n"
        "print(shim_applied(), hasattr(tv, 'models'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_shim_is_applied_only_when_needed():
    code = (
        "from ice._compat import import_torchvision, shim_applied\n"
        "import torch\n"
        "tv = import_torchvision()\n"
        "ext = tv.extension._has_ops()\n"
        "print(ext, shim_applied())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ext, applied = out.stdout.split()
    # exactly one of them: either the compiled extension loaded, or the shim stepped in
    assert ext != applied
