"""Training data: dataset formats, the paper's caption sampling, bad input counted not crashed.

    from smartclip.data import DataConfig, build_train_data
    data = build_train_data(DataConfig(train="pairs.csv"), preprocess=smartclip.image_transform(model, train=True),
                            tokenizer=smartclip.get_tokenizer(model), batch_size=256)
    for epoch in range(3):
        data.set_epoch(epoch)
        for batch in data: ...   # images [B,3,H,W], tokens [B*k,248], image_index [B*k], texts

See docs/data.md for formats, the source-mixing syntax, and how bad input is handled.
``smartclip.data.prepare.prepare_dataset`` (``smartclip data prepare``) decodes and resizes a
dataset once into shards that train to the same tensors, much faster.
"""
from .errors import DataError, BadImage, BadCaption, BadInputStats, SKIPPED_KINDS, REPAIRED_KINDS, ALL_KINDS
from .images import load_image, DEFAULT_MAX_IMAGE_PIXELS
from .captions import CAPTION_MODES, clean_caption, split_sentences, sample_caption
from .records import Record
from .readers import read_csv, read_sharegpt4v, scan_sharegpt4v, parse_image_roots, SHAREGPT4V_EVAL_SIZE
from .config import DataConfig, parse_sources
from .loader import TrainData, build_train_data

__all__ = [
    "DataConfig", "build_train_data", "TrainData", "DataError", "BadImage", "BadCaption", "BadInputStats",
    "SKIPPED_KINDS", "REPAIRED_KINDS", "ALL_KINDS", "load_image", "DEFAULT_MAX_IMAGE_PIXELS",
    "CAPTION_MODES", "clean_caption", "split_sentences", "sample_caption", "Record", "read_csv",
    "read_sharegpt4v", "scan_sharegpt4v", "parse_image_roots", "SHAREGPT4V_EVAL_SIZE", "parse_sources",
]
