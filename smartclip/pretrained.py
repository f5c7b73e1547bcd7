"""Released weights by name: the registry of pretrained tags and their download through
huggingface_hub's cache.

A tag is ``ARCHITECTURE:TAG``. Ours (``ViT-B-16:smartclip``, ``ViT-L-14:longclip``...) are
listed in :data:`RELEASED`: each entry names the architecture and model options the file was
trained with (nothing is guessed from the tensors), the Hugging Face repository and file, the
licence and the paper's numbers it should reproduce (docs/method.md §6). Every open_clip tag
(``ViT-B-16:openai``...) is a tag too, from open_clip's own registry.

Files are fetched with ``huggingface_hub.hf_hub_download`` into its cache (``HF_HUB_CACHE``,
by default ``~/.cache/huggingface/hub``), with its progress bar. With ``HF_HUB_OFFLINE=1``, or
when the hub cannot be reached (checked once per process, within ``SMARTCLIP_HUB_TIMEOUT``
seconds, default 3), only the cache is read: a file that is not there is one line naming the
repository and file and how to pass a local copy instead.
"""
from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import huggingface_hub.constants as hub_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled,
                                    RepositoryNotFoundError, RevisionNotFoundError)
from open_clip.pretrained import download_pretrained_from_url, get_pretrained_cfg, list_pretrained_tags_by_model

from .checkpoint import ModelNotFoundError
from .model import DEFAULT_OPTIONS

__all__ = ["Pretrained", "RELEASED", "get_pretrained", "list_pretrained", "open_clip_tag", "hub_file",
           "hub_reachable", "open_clip_weights", "HUB_ERRORS"]

# What a failed look-up in the hub or its cache raises; anything else (a full disk, a folder
# that cannot be written) surfaces as itself.
HUB_ERRORS = (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, OfflineModeIsEnabled,
              HfHubHTTPError)

_B16 = {"COCO": (61.9, 42.4), "Flickr30k (full)": (55.6, 36.3), "ShareGPT4V-1k": (98.7, 98.1),
        "Urban1k": (90.5, 87.3), "ImageNet top-1": 66.1, "DOCCI": (77.4, 78.0), "DCI": (64.9, 64.0),
        "Long-DCI": (53.4, 52.8)}
_L14 = {"COCO": (66.1, 48.4), "Flickr30k (full)": (64.0, 43.8), "ShareGPT4V-1k": (97.9, 98.5),
        "Urban1k": (93.3, 90.1), "ImageNet top-1": 72.5, "DOCCI": (81.6, 82.5), "DCI": (68.2, 69.8),
        "Long-DCI": (57.6, 58.5)}
_LONG_B16 = {"COCO": (57.3, 40.4), "Flickr30k (full)": (47.2, 33.2), "ShareGPT4V-1k": (94.8, 93.3),
             "Urban1k": (79.3, 79.4), "ImageNet top-1": 66.8}
_LONG_L14 = {"COCO": (62.9, 46.3), "Flickr30k (full)": (53.5, 41.3), "ShareGPT4V-1k": (97.2, 97.3),
             "Urban1k": (82.5, 86.1), "ImageNet top-1": 72.8}


@dataclass(frozen=True)
class Pretrained:
    """One released file and what it is. ``model_cfg``: changes to the open_clip config of
    ``architecture`` (OpenAI's CLIPs use QuickGELU); ``options``: the SmartCLIP options it was
    trained with; ``mask_trained``: whether the file holds a trained mask network (Long-CLIP's
    do not: theirs keeps its fresh initialisation); ``paper``: R@1 image->text / text->image and
    ImageNet top-1 (%) of docs/method.md §6, which an evaluation of these weights should reproduce."""
    architecture: str
    tag: str
    hf_hub: str
    filename: str
    license: str
    description: str
    mask_trained: bool
    model_cfg: Dict = field(default_factory=lambda: {"quick_gelu": True})
    options: Dict = field(default_factory=lambda: dict(DEFAULT_OPTIONS))
    paper: Dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.architecture}:{self.tag}"

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.hf_hub}/blob/main/{self.filename}"


_UNSTATED = "not stated with the weights; see the repository before redistributing"
RELEASED: Dict[Tuple[str, str], Pretrained] = {(p.architecture, p.tag): p for p in [
    Pretrained("ViT-B-16", "smartclip", "Shaoan/SmartCLIP", "smartclip_b16.pt", _UNSTATED,
               "SmartCLIP ViT-B/16, the authors' release (Xie et al., CVPR 2025)", True, paper=_B16),
    Pretrained("ViT-L-14", "smartclip", "Shaoan/SmartCLIP", "smartclip_l14.pt", _UNSTATED,
               "SmartCLIP ViT-L/14, the authors' release (Xie et al., CVPR 2025)", True, paper=_L14),
    Pretrained("ViT-B-16", "longclip", "BeichenZhang/LongCLIP-B", "longclip-B.pt", _UNSTATED,
               "Long-CLIP ViT-B/16 (Zhang et al., ECCV 2024); the mask network is untrained", False,
               paper=_LONG_B16),
    Pretrained("ViT-L-14", "longclip", "BeichenZhang/LongCLIP-L", "longclip-L.pt", _UNSTATED,
               "Long-CLIP ViT-L/14 (Zhang et al., ECCV 2024); the mask network is untrained", False,
               paper=_LONG_L14),
]}


def get_pretrained(architecture: str, tag: str) -> Optional[Pretrained]:
    """Our registry's entry for ``architecture:tag``, or ``None``."""
    return RELEASED.get((architecture.replace("/", "-"), tag))


def open_clip_tag(architecture: str, tag: str) -> dict:
    """open_clip's config of the tag (``hf_hub``, ``url``, ``quick_gelu``, mean / std...), or ``{}``."""
    return get_pretrained_cfg(architecture.replace("/", "-"), tag)


def list_pretrained(architectures: Optional[List[str]] = None) -> List[dict]:
    """Every tag with its source: ours first, then open_clip's (for ``architectures`` only, when given)."""
    rows = [{"name": p.name, "source": f"hf-hub {p.hf_hub}/{p.filename}", "license": p.license,
             "description": p.description} for p in RELEASED.values()]
    for arch in architectures or []:
        for tag in list_pretrained_tags_by_model(arch):
            cfg = open_clip_tag(arch, tag)
            source = f"hf-hub {cfg['hf_hub'].rstrip('/')}" if cfg.get("hf_hub") else cfg.get("url", "")
            rows.append({"name": f"{arch}:{tag}", "source": f"open_clip, {source}", "license": "",
                         "description": ""})
    return rows


def tags_of(architecture: str) -> List[str]:
    """Our tags, then open_clip's, of one architecture."""
    arch = architecture.replace("/", "-")
    return [t for a, t in RELEASED if a == arch] + list_pretrained_tags_by_model(arch)


# ------------------------------------------------------------------------------ the hub
_reachable: Dict[str, bool] = {}


def _offline_env() -> bool:
    """HF_HUB_OFFLINE as set now, or as huggingface_hub read it when it was imported."""
    return hub_constants.HF_HUB_OFFLINE or any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
                                               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: Optional[float] = None) -> bool:
    """Whether downloads can be tried: not when ``HF_HUB_OFFLINE=1``, nor when a TCP connection
    to the hub's host (or to the proxy, when one is set for it) does not open within ``timeout``
    seconds (``SMARTCLIP_HUB_TIMEOUT``, default 3; the name look-up included). Probed once per
    process and endpoint."""
    if _offline_env():
        return False
    endpoint = os.environ.get("HF_ENDPOINT") or hub_constants.ENDPOINT
    if endpoint in _reachable:
        return _reachable[endpoint]
    timeout = float(os.environ.get("SMARTCLIP_HUB_TIMEOUT", 3)) if timeout is None else timeout
    parts = urllib.parse.urlsplit(endpoint)
    proxy = urllib.request.getproxies().get(parts.scheme) or urllib.request.getproxies().get("all")
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")  # the proxy is what we reach
    host, port = parts.hostname or "huggingface.co", parts.port or (443 if parts.scheme == "https" else 80)
    result: List[bool] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)
    thread = threading.Thread(target=probe, daemon=True)  # a name look-up ignores socket timeouts
    thread.start()
    thread.join(timeout)
    _reachable[endpoint] = bool(result and result[0])
    return _reachable[endpoint]


def _cache_dir(cache_dir) -> Optional[str]:
    """huggingface_hub reads HF_HUB_CACHE when it is imported; read it again at each call."""
    if cache_dir is not None:
        return str(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def hub_file(repo: str, filename: str, *, what: str, local_hint: str, cache_dir=None,
             revision: Optional[str] = None) -> str:
    """The local path of ``repo``'s ``filename``: from the cache, downloaded when the hub can be
    reached. Not cached and not downloadable: :class:`ModelNotFoundError`, one line saying
    ``what`` wanted it, where the file is, and ``local_hint`` (how to pass a local copy)."""
    online = hub_reachable()
    try:
        return hf_hub_download(repo, filename, revision=revision, cache_dir=_cache_dir(cache_dir),
                               local_files_only=not online, endpoint=os.environ.get("HF_ENDPOINT") or None)
    except HUB_ERRORS as e:
        endpoint = os.environ.get("HF_ENDPOINT") or hub_constants.ENDPOINT
        url = f"{endpoint.rstrip('/')}/{repo}/blob/{revision or 'main'}/{filename}"
        if online:
            why = type(e).__name__
        else:
            why = "HF_HUB_OFFLINE=1" if _offline_env() else "the hub cannot be reached"
        cache = _cache_dir(cache_dir) or hub_constants.HF_HUB_CACHE
        raise ModelNotFoundError(f"{what}: {repo}/{filename} is not in {cache} and could not be downloaded "
                                 f"({why}); get {url} on a machine with network and {local_hint}") from e


def open_clip_weights(architecture: str, tag: str, cfg: dict, cache_dir=None) -> str:
    """The local file of open_clip's ``tag`` weights, through the same cache and offline rules
    as ours (open_clip prefers a ``.safetensors`` copy when the repository has one)."""
    name = f"{architecture}:{tag}"
    if cfg.get("file"):
        return cfg["file"]
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        hint = f"pass the file as {architecture}:/path/to/{filename}"
        if filename == "open_clip_pytorch_model.bin":  # the alternatives open_clip itself tries first
            safe = ["open_clip_model.safetensors"]
        else:
            safe = [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
        for alternative in safe:
            try:
                return hub_file(repo, alternative, what=name, local_hint=hint, cache_dir=cache_dir)
            except ModelNotFoundError:
                pass  # no safetensors copy: the file itself below
        return hub_file(repo, filename, what=name, local_hint=hint, cache_dir=cache_dir)
    url = cfg.get("url", "")
    if not url:
        raise ModelNotFoundError(f"{name}: open_clip gives no download source for this tag")
    filename = os.path.basename(urllib.parse.urlsplit(url).path) or "weights.pt"
    try:
        return download_pretrained_from_url(url, cache_dir=cache_dir)  # a cached file is not fetched again
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:  # network errors; others surface
        raise ModelNotFoundError(f"{name}: the weights are not cached here and could not be downloaded "
                                 f"({type(e).__name__}); get {url} on a machine with network and pass the file "
                                 f"as {architecture}:/path/to/{filename}") from e
