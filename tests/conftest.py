"""Shared test set-up: offline hubs, few threads, real images that ship inside wheels."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
