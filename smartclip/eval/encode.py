"""Batched, no-grad feature extraction shared by evaluation, search and the scene benchmark."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

__all__ = ["encode_images", "encode_texts", "encode_image_items", "encode_text_items", "encode_dataset",
           "ImageLoadError", "UNREADABLE", "model_dtype"]

ImageItem = Union[str, os.PathLike, Image.Image, np.ndarray]


class ImageLoadError(ValueError):
    """An image file that is missing or cannot be decoded."""


# What reading one image raises when the image itself is at fault: a file that is absent or
# not an image (OSError, PIL's UnidentifiedImageError), a truncated or malformed one (OSError,
# ValueError, SyntaxError, EOFError from PIL's plugins), a decompression bomb, a bad array
# (ImageLoadError). Anything else (a broken ``preprocess``, a bug) is raised as it is.
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def model_dtype(model) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _describe(item) -> str:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"<{type(item).__name__}>"


def _to_pil(item: ImageItem) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] not in (1, 3):
            raise ImageLoadError(f"array images must be HxWx3 uint8, got {item.dtype} {item.shape}")
        return Image.fromarray(item if item.shape[2] == 3 else np.repeat(item, 3, 2))
    with Image.open(item) as im:
        return im.convert("RGB")


class _ImageItems(torch.utils.data.Dataset):
    """Applies ``preprocess`` to paths / PIL images / arrays; a failure is returned, not raised,
    so a whole run can report every bad file at once."""

    def __init__(self, items: Sequence[ImageItem], preprocess, image_size):
        self.items, self.preprocess, self.image_size = items, preprocess, image_size

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        try:
            image = _to_pil(self.items[index])
        except UNREADABLE as exc:  # reported per file by the caller
            return torch.zeros(3, *self.image_size), index, f"{type(exc).__name__}: {exc}"
        return self.preprocess(image), index, ""


def encode_image_items(model, preprocess, items: Sequence[ImageItem], batch_size: int = 64, device="cpu",
                       progress: bool = False, num_workers: int = 0, desc: str = "images"
                       ) -> Tuple[torch.Tensor, Dict[int, str]]:
    """``(features [n, dim] float32 on CPU, {index: error})``. Rows of images that failed to
    load are zeros and listed in the dict."""
    from tqdm.auto import tqdm
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size = tuple(getattr(model, "image_size", (224, 224)))
    loader = torch.utils.data.DataLoader(_ImageItems(list(items), preprocess, size), batch_size=batch_size,
                                         num_workers=num_workers, shuffle=False)
    dtype = model_dtype(model)
    chunks, failures = [], {}
    with torch.no_grad(), tqdm(total=len(items), desc=f"encode {desc}", unit="img", disable=not progress) as bar:
        for pixels, indices, errors in loader:
            for index, error in zip(indices.tolist(), errors):
                if error:
                    failures[index] = error
            features = model.encode_image(pixels.to(device=device, dtype=dtype))
            chunks.append(features.float().cpu())
            bar.update(len(indices))
    if not chunks:
        raise ValueError("no images to encode")
    return torch.cat(chunks), failures


class _MapSamples(torch.utils.data.Dataset):
    """``(pixels, target, index, error)`` for the samples ``indices`` of a map-style dataset
    yielding ``(PIL image, target)``; a sample that fails to load is returned with its error."""

    def __init__(self, dataset, indices: Sequence[int], preprocess, image_size):
        self.dataset, self.indices, self.preprocess, self.image_size = dataset, list(indices), preprocess, image_size

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, position):
        index = self.indices[position]
        try:
            image, target = self.dataset[index]
        except UNREADABLE as exc:  # reported per sample by the caller
            return torch.zeros(3, *self.image_size), None, index, f"{type(exc).__name__}: {exc}"
        return self.preprocess(image), target, index, ""


class _IterableSamples(torch.utils.data.IterableDataset):
    """``(pixels, target, -1, "")`` for an iterable dataset yielding ``(PIL image, target)``
    (a WebDataset pipeline). A sample it cannot decode ends the iteration: its error (one of
    ``decode_errors``) is raised as :class:`ImageLoadError`; any other is raised as it is."""

    def __init__(self, dataset, preprocess, decode_errors: Tuple[type, ...]):
        self.dataset, self.preprocess, self.decode_errors = dataset, preprocess, decode_errors

    def __iter__(self):
        samples = iter(self.dataset)
        while True:
            try:
                image, target = next(samples)
            except StopIteration:
                return
            except self.decode_errors as exc:
                raise ImageLoadError(f"a sample could not be decoded: {_cause(exc)}") from exc
            yield self.preprocess(image), target, -1, ""


def _cause(exc: BaseException) -> str:
    """``Type: message`` of the innermost cause (a decoder's wrapper names the sample, its cause the fault)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


def _collate_samples(batch):
    pixels, targets, indices, errors = zip(*batch)
    return torch.stack(pixels), list(targets), list(indices), list(errors)


def _stack_targets(targets: List[object]) -> torch.Tensor:
    if targets and not isinstance(targets[0], (int, np.integer)) and np.ndim(targets[0]) > 0:
        return torch.stack([torch.as_tensor(np.asarray(t), dtype=torch.float32) for t in targets])
    return torch.as_tensor([int(t) for t in targets], dtype=torch.long)


def encode_dataset(model, dataset, preprocess, indices: Optional[Sequence[int]] = None, batch_size: int = 64,
                   device="cpu", progress: bool = False, num_workers: int = 0, desc: str = "images",
                   decode_errors: Tuple[type, ...] = UNREADABLE
                   ) -> Tuple[torch.Tensor, torch.Tensor, List[int], Dict[int, str]]:
    """Encode a dataset yielding ``(PIL image, target)`` (a torchvision-style map dataset, or an
    iterable one such as a WebDataset pipeline), applying ``preprocess`` to each image.

    Returns ``(features [n, dim] float32 on CPU, targets [n] or [n, classes], dataset
    indices of the n rows, {index: error})``; rows are the samples that loaded (for a map
    dataset, those of ``indices``, default all). A sample an iterable dataset cannot decode
    (``decode_errors``) stops it and is raised as :class:`ImageLoadError`; any other failure
    (of ``preprocess``, of the model) is raised as it is."""
    from tqdm.auto import tqdm
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size = tuple(getattr(model, "image_size", (224, 224)))
    iterable = isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__getitem__")
    if iterable:
        samples = _IterableSamples(dataset, preprocess, decode_errors)
        total = None
    else:
        samples = _MapSamples(dataset, range(len(dataset)) if indices is None else indices, preprocess, size)
        total = len(samples)
    loader = torch.utils.data.DataLoader(samples, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                                         collate_fn=_collate_samples)
    dtype = model_dtype(model)
    chunks, targets, rows, failures = [], [], [], {}
    seen = 0
    with torch.no_grad(), tqdm(total=total, desc=f"encode {desc}", unit="img", disable=not progress) as bar:
        for pixels, batch_targets, batch_indices, errors in loader:
            keep = [j for j, error in enumerate(errors) if not error]
            for j, error in enumerate(errors):
                if error:
                    failures[batch_indices[j]] = error
            if keep:
                batch = pixels[keep] if len(keep) < len(errors) else pixels
                chunks.append(model.encode_image(batch.to(device=device, dtype=dtype)).float().cpu())
                targets.extend(batch_targets[j] for j in keep)
                rows.extend((seen + j) if iterable else batch_indices[j] for j in keep)
            seen += len(errors)
            bar.update(len(errors))
    if not chunks:
        raise ValueError(f"no readable images to encode ({len(failures)} failed)")
    return torch.cat(chunks), _stack_targets(targets), rows, failures


def encode_images(model, preprocess, images_or_paths: Sequence[ImageItem], batch_size: int = 64, device="cpu",
                  progress: bool = False, num_workers: int = 0) -> torch.Tensor:
    """Unnormalised image features [n, dim] (float32, CPU) for paths, PIL images or HxWx3
    uint8 arrays. Raises :class:`ImageLoadError` naming every file that could not be read."""
    features, failures = encode_image_items(model, preprocess, images_or_paths, batch_size, device,
                                            progress, num_workers)
    if failures:
        listing = "; ".join(f"{_describe(images_or_paths[i])}: {e}" for i, e in sorted(failures.items())[:10])
        raise ImageLoadError(f"{len(failures)} of {len(images_or_paths)} images could not be read: {listing}")
    return features


def encode_text_items(model, tokenizer, texts: Sequence[str], batch_size: int = 256, device="cpu",
                      progress: bool = False, desc: str = "texts") -> Tuple[torch.Tensor, int]:
    """``(features [n, dim] float32 on CPU, number of texts truncated to the context)``.

    Texts are encoded in order of token length so each batch's padding can be trimmed
    (``encode_text(trim=True)`` stops after the longest text of the batch); rows are
    returned in the input order."""
    from tqdm.auto import tqdm
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, expected str")
    if not texts:
        raise ValueError("no texts to encode")
    tokens, truncated = tokenizer.tokenize(texts)
    lengths = (tokens != 0).sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    out: Optional[torch.Tensor] = None
    with torch.no_grad(), tqdm(total=len(texts), desc=f"encode {desc}", unit="txt", disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            features = model.encode_text(tokens[rows].to(device), trim=True).float().cpu()
            if out is None:
                out = torch.empty(len(texts), features.shape[1])
            out[rows] = features
            bar.update(len(rows))
    return out, int(truncated.sum())


def encode_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 256, device="cpu",
                 progress: bool = False) -> torch.Tensor:
    """Unnormalised text features [n, dim] (float32, CPU), tokenised at the model's context
    (248) with truncation counted by the tokenizer."""
    return encode_text_items(model, tokenizer, texts, batch_size, device, progress)[0]
