"""Shared test set-up: offline hubs, few threads, real images that ship inside wheels, and the
``--device`` option.

``pytest --device cuda`` runs the tests that take the ``device`` fixture on a GPU (they are
marked ``device`` automatically, so ``-m device`` selects them); the default is ``cpu``. Tests
marked ``cuda`` always run on a GPU and are skipped where there is none.
"""
import contextlib
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


# ------------------------------------------------------------------ float64 equivalence checks
# Two computations that are equal in exact arithmetic but add up in another order (a batch split
# over processes or micro-batches, another memory layout, another kernel) are compared through
# the quantities the claim is about: the loss and the parameter gradients of one step, computed
# in float64. Never through weights after optimizer steps: Adam divides each gradient by its own
# running magnitude, so a rounding difference Δg in an entry whose gradient is near Adam's eps
# becomes a weight difference of up to lr·Δg/eps; at float32 that is 1e-4·1e-9/1e-8 = 1e-5, the
# size of a real error, and how close a gradient lands to eps depends on the CPU's kernels.
#
# The tolerance follows from the arithmetic. Summing n terms in two orders differs by at most
# about 2·n·u·Σ|terms| (u = 2**-53 in float64); here a gradient entry sums at most ~10^4 terms
# (batch × tokens × width of the micro models) and the few layers of backpropagation amplify a
# relative error by at most ~10^2 (softmax, normalisations), so differences stay below
# ~2·10^4·10^2·1.1e-16 ≈ 2e-10 of the terms' size; GRAD_RTOL = 1e-9 leaves a margin of 5. The
# terms' size is taken as the largest gradient entry of the same tensor, and at least
# GRAD_FLOOR of the largest of the whole model, for tensors whose gradient is zero in exact
# arithmetic (the attention key biases: softmax ignores a constant added to every score) and
# is float noise of terms the size of their neighbours'. A real error - a lost negative, a
# missing 1/world factor, an unsynchronised gradient, a float32 step inside - is 1e-7 (float32
# rounding) or more, a hundred times the tolerance and up.
U64 = 2.0 ** -53
GRAD_RTOL = 1e-9
GRAD_FLOOR = 1e-3


def step_gradients(model: torch.nn.Module) -> dict:
    """``{name: gradient}`` of the parameters that received one (a copy)."""
    return {name: p.grad.detach().clone().cpu() for name, p in model.named_parameters() if p.grad is not None}


def gradient_differences(a: dict, b: dict) -> dict:
    """``{name: max |a - b| / scale}``, the scale as in the comment above (``b``'s magnitudes)."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    assert all(t.dtype == torch.float64 for t in (*a.values(), *b.values())), \
        "the equivalence checks compare float64 gradients"
    biggest = max(t.abs().max().item() for t in b.values() if t.numel())
    assert biggest > 0, "no gradient at all"
    out = {}
    for name in a:
        if not a[name].numel():
            continue
        scale = max(b[name].abs().max().item(), GRAD_FLOOR * biggest)
        out[name] = (a[name] - b[name]).abs().max().item() / scale
    return out


def assert_same_gradients(a: dict, b: dict, rtol: float = GRAD_RTOL):
    """Two float64 gradient dicts equal up to summation order (see the comment above)."""
    worst = max((d, name) for name, d in gradient_differences(a, b).items())
    assert worst[0] <= rtol, f"gradients differ by {worst[0]:.3g} of their scale in {worst[1]} (tolerance {rtol:g})"


def assert_same_loss(a: float, b: float, rtol: float = 8 * 2.0 ** -24):
    """Two losses of one step as the step reports them: float64 losses rounded to float32 by
    ``StepOutput`` (and averaged over processes in float32): up to four float32 roundings apart."""
    assert a == pytest.approx(b, rel=rtol, abs=0), (a, b)


@contextlib.contextmanager
def float64_training():
    """``smartclip.train.train`` (and anything else) in float64 inside the block: the default
    dtype is float64, which torchvision's ``to_tensor`` follows for the images, and
    ``smartclip.create_model``, which casts to float32, returns the model in float64."""
    import smartclip
    previous, create = torch.get_default_dtype(), smartclip.create_model

    def create_model(*args, **kwargs):
        return create(*args, **kwargs).double()

    torch.set_default_dtype(torch.float64)
    smartclip.create_model = create_model
    try:
        yield
    finally:
        smartclip.create_model = create
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def served_photos(root, n: int = 6, size: int = 40, **app_options):
    """A search server over ``n`` real photos in ``root/images`` (a micro model, seed 0), on a
    loopback port: yields ``(url, index, app)``; shut down on exit."""
    import smartclip
    from smartclip import search
    from smartclip.serve import SearchApp, start_in_thread
    (root / "images").mkdir(exist_ok=True)
    for i, im in enumerate(real_images(n, size)):
        im.save(root / "images" / f"photo{i}.png")
    torch.manual_seed(0)
    model = smartclip.create_model("smartclip-micro").eval()
    preprocess, tokenizer = smartclip.image_transform(model), smartclip.get_tokenizer(model)
    index = search.build_index(model, preprocess, root / "images", root / "index", progress=False)
    app = SearchApp(index.searcher(model, preprocess, tokenizer), **app_options)
    server, url = start_in_thread(app)
    try:
        yield url, index, app
    finally:
        server.shutdown()
        server.server_close()
