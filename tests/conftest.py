"""Shared test set-up: offline hubs, few threads, real images that ship inside wheels, and the
``--device`` option.

``pytest --device cuda`` runs the tests that take the ``device`` fixture on a GPU (they are
marked ``device`` automatically, so ``-m device`` selects them); the default is ``cpu``. Tests
marked ``cuda`` always run on a GPU and are skipped where there is none.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="torch device for the tests that take the `device` fixture: cpu (default), cuda or cuda:N")


def pytest_configure(config):
    name = config.getoption("--device")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise pytest.UsageError(f"--device {name}: not a torch device ({e})") from None
    if device.type not in ("cpu", "cuda"):
        raise pytest.UsageError(f"--device {name}: the tests run on cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {name}: no CUDA device here (torch.cuda.is_available() is False)")
    if torch.cuda.is_available():
        # tests compare fp32 results at ~1e-5; cuDNN's default TF32 convolutions keep 10 mantissa bits
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so `-m device` sees the added marker
def pytest_collection_modifyitems(config, items):
    no_cuda = None if torch.cuda.is_available() else pytest.mark.skip(
        reason="no CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker("device")
        if no_cuda is not None and item.get_closest_marker("cuda") is not None:
            item.add_marker(no_cuda)


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The ``--device`` of this run (``cpu`` unless asked otherwise)."""
    return torch.device(request.config.getoption("--device"))


def real_images(n: int = 6, size: int = 96):
    """``n`` distinct RGB PIL images made from scikit-image's sample photos (cropped and
    resized deterministically)."""
    from skimage import data
    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
    out = []
    for i in range(n):
        arr = getattr(data, names[i % len(names)])()
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, -1)
        h, w = arr.shape[:2]
        k = i // len(names)
        crop = arr[k * h // 8: h - k * h // 16, k * w // 8: w - k * w // 16, :3]
        out.append(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BICUBIC))
    return out


@pytest.fixture(scope="session")
def images():
    return real_images()


@pytest.fixture()
def micro_model():
    import smartclip
    torch.manual_seed(0)
    return smartclip.create_model("smartclip-micro").eval()


@pytest.fixture()
def unused_port():
    """A free TCP port on loopback for a torch.distributed rendezvous."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
