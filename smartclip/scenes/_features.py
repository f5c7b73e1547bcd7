"""Feature encoding and recall for the scene benchmark.

Uses ``smartclip.eval``'s ``encode_images`` / ``encode_texts`` / ``retrieval_recall`` when that
package provides them; the small fallbacks below only keep this benchmark usable while it
does not (same definitions: L2-normalised unmasked features; recall in percent with several
captions per image).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image


def _eval_api():
    try:
        from smartclip import eval as ev
    except ImportError:
        return None
    if all(hasattr(ev, n) for n in ("encode_images", "encode_texts", "retrieval_recall")):
        return ev
    return None


def _bar(iterable, progress, desc, total):
    if not progress:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False)


@torch.no_grad()
def encode_images(model, preprocess, paths: Sequence[str], *, batch_size=64, device="cpu", progress=True,
                  desc="images", cache=None) -> torch.Tensor:
    out = []
    starts = range(0, len(paths), batch_size)
    for start in _bar(starts, progress, desc, len(starts)):
        batch = []
        for p in paths[start: start + batch_size]:
            with Image.open(p) as im:
                batch.append(preprocess(im.convert("RGB")))
        out.append(model.encode_image(torch.stack(batch).to(device), normalize=True).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], *, batch_size=64, device="cpu", progress=True,
                 desc="texts", cache=None) -> torch.Tensor:
    out = []
    starts = range(0, len(texts), batch_size)
    for start in _bar(starts, progress, desc, len(starts)):
        tokens = tokenizer(list(texts[start: start + batch_size])).to(device)
        out.append(model.encode_text(tokens, normalize=True).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


def retrieval_recall(image_features, text_features, text_to_image, ks=(1, 5)) -> dict:
    ev = _eval_api()
    if ev is not None:
        return ev.retrieval_recall(image_features, text_features, text_to_image, ks=ks)
    img = F.normalize(image_features.float(), dim=-1)
    txt = F.normalize(text_features.float(), dim=-1)
    owner = torch.as_tensor(list(text_to_image))
    sim = img @ txt.T  # [images, texts]
    out = {}
    for k in ks:
        top_txt = sim.topk(min(k, sim.shape[1]), dim=1).indices  # texts per image
        i2t = (owner[top_txt] == torch.arange(len(img))[:, None]).any(1).float().mean()
        top_img = sim.T.topk(min(k, sim.shape[0]), dim=1).indices
        t2i = (top_img == owner[:, None]).any(1).float().mean()
        out[f"i2t@{k}"], out[f"t2i@{k}"] = 100 * float(i2t), 100 * float(t2i)
    return out
