"""Sample inputs for trying the commands: real photos that ship with scikit-image, and a
caption for each. The README's tour starts by writing them::

    import smartclip.samples
    smartclip.samples.write_photos("photos", captions="captions.txt")
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

__all__ = ["SAMPLE_PHOTOS", "write_photos"]

# file name -> (scikit-image data function, caption); all of these are inside the scikit-image
# wheel (no download)
SAMPLE_PHOTOS: Dict[str, tuple] = {
    "astronaut.jpg": ("astronaut", "an astronaut in a white spacesuit in front of a flag"),
    "cat.jpg": ("chelsea", "a ginger tabby cat looking to the side"),
    "coffee.jpg": ("coffee", "a cup of coffee on a saucer"),
    "rocket.jpg": ("rocket", "a rocket standing on its launch pad"),
    "camera.jpg": ("camera", "a black and white photo of a man with a camera on a tripod"),
    "galaxies.jpg": ("hubble_deep_field", "hundreds of galaxies in the deep sky"),
}


def write_photos(folder="photos", captions: Optional[str] = "captions.txt", max_side: int = 256) -> Path:
    """Write :data:`SAMPLE_PHOTOS` as JPEGs (longest side ``max_side`` pixels) into ``folder``
    and, unless ``captions`` is None, their captions to that file, one a line in the same
    order. Needs scikit-image (in the ``dev`` extra: ``pip install scikit-image``)."""
    try:
        from skimage import data
    except ImportError as e:
        raise ImportError("the sample photos come from scikit-image: pip install scikit-image") from e
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, (function, _) in SAMPLE_PHOTOS.items():
        pixels = getattr(data, function)()
        image = Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")
        image.thumbnail((max_side, max_side), Image.BICUBIC)
        image.save(folder / name, quality=90)
    if captions is not None:
        Path(captions).write_text("".join(caption + "\n" for _, caption in SAMPLE_PHOTOS.values()))
    return folder
