"""Evaluation: the paper's benchmarks by name, memory-bounded metrics, the protocol next to
every number.

    import smartclip
    from smartclip.eval import evaluate, list_benchmarks
    model = smartclip.create_model("smartclip-micro")
    list_benchmarks()                     # ['sharegpt4v-1k', 'urban1k', ..., 'retrieval:PATH', ...]
    evaluate(model, ["coco", "urban1k"], root="/data", out_dir="runs/eval")
"""
from .metrics import retrieval_recall, retrieval_recall_dense, masked_scores, topk_accuracy
from .encode import encode_images, encode_texts, ImageLoadError
from .zeroshot import build_classifier, classify, openai_templates, imagenet_classnames
from .benchmark import (Benchmark, RetrievalBenchmark, ClassificationBenchmark, RetrievalData,
                        ClassificationData, FeatureCache, DatasetNotFoundError, DatasetFormatError,
                        IncompleteBenchmarkError)
from .registry import (register_benchmark, list_benchmarks, get_benchmark, describe_benchmarks,
                       PAPER_BENCHMARKS, DATA_ROOT_ENV)
from .results import write_results, read_results, markdown_table, compare_table
from .runner import evaluate

__all__ = [
    "retrieval_recall", "retrieval_recall_dense", "masked_scores", "topk_accuracy",
    "encode_images", "encode_texts", "ImageLoadError",
    "build_classifier", "classify", "openai_templates", "imagenet_classnames",
    "Benchmark", "RetrievalBenchmark", "ClassificationBenchmark", "RetrievalData", "ClassificationData",
    "FeatureCache", "DatasetNotFoundError", "DatasetFormatError", "IncompleteBenchmarkError",
    "register_benchmark", "list_benchmarks", "get_benchmark", "describe_benchmarks", "PAPER_BENCHMARKS",
    "DATA_ROOT_ENV", "write_results", "read_results", "markdown_table", "compare_table", "evaluate",
]
