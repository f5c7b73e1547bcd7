"""Using a trained model on your own data: embedding folders, an image index with exact /
FAISS / masked search, and analysis of the masks captions select."""
from .sources import ImageSource, TextSource, list_images, read_text_lines, SourceError, IMAGE_EXTENSIONS
from .encoding import EmbeddingSet, encode_image_source, encode_text_source, write_parquet, EncodingError
from .index import (ImageIndex, Searcher, SearchHit, SearchResult, build_index, IndexModelMismatch,
                    faiss_available, masked_scores, BACKENDS)
from .masks import MaskReport, caption_masks, mask_expression, plot_masks, MaskExpressionError

__all__ = [
    "ImageSource", "TextSource", "list_images", "read_text_lines", "SourceError", "IMAGE_EXTENSIONS",
    "EmbeddingSet", "encode_image_source", "encode_text_source", "write_parquet", "EncodingError",
    "ImageIndex", "Searcher", "SearchHit", "SearchResult", "build_index", "IndexModelMismatch",
    "faiss_available", "masked_scores", "BACKENDS",
    "MaskReport", "caption_masks", "mask_expression", "plot_masks", "MaskExpressionError",
]
