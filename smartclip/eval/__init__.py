"""Evaluation: the paper's benchmarks by name, memory-bounded metrics, the protocol next to
every number.

    import smartclip
    from smartclip.eval import evaluate, list_benchmarks
    model = smartclip.create_model("smartclip-micro")
    list_benchmarks()                     # ['sharegpt4v-1k', 'urban1k', ..., 'clip_benchmark/sun397', ...]
    evaluate(model, ["coco", "urban1k"], root="/data", out_dir="runs/eval")
    evaluate(model, ["paper-zeroshot"], root="/data")   # the paper's Table 3 through CLIP_benchmark
"""
from .metrics import (retrieval_recall, retrieval_recall_dense, masked_scores, topk_accuracy, mean_per_class_recall,
                      average_precision_per_class)
from .encode import encode_images, encode_texts, ImageLoadError
from .zeroshot import build_classifier, classify, classify_multilabel, openai_templates, imagenet_classnames
from .benchmark import (Benchmark, RetrievalBenchmark, ClassificationBenchmark, RetrievalData,
                        ClassificationData, FeatureCache, DatasetNotFoundError, DatasetFormatError,
                        IncompleteBenchmarkError)
from .registry import (register_benchmark, list_benchmarks, get_benchmark, describe_benchmarks, expand_suites,
                       PAPER_BENCHMARKS, SUITES, DATA_ROOT_ENV)
from .clip_benchmark import CLIP_BENCHMARK_DATASETS, PAPER_TABLE3, ClipBenchmarkClassification
from .results import write_results, read_results, markdown_table, compare_table
from .runner import evaluate

__all__ = [
    "retrieval_recall", "retrieval_recall_dense", "masked_scores", "topk_accuracy", "mean_per_class_recall",
    "average_precision_per_class",
    "encode_images", "encode_texts", "ImageLoadError",
    "build_classifier", "classify", "classify_multilabel", "openai_templates", "imagenet_classnames",
    "Benchmark", "RetrievalBenchmark", "ClassificationBenchmark", "RetrievalData", "ClassificationData",
    "FeatureCache", "DatasetNotFoundError", "DatasetFormatError", "IncompleteBenchmarkError",
    "register_benchmark", "list_benchmarks", "get_benchmark", "describe_benchmarks", "expand_suites",
    "PAPER_BENCHMARKS", "SUITES", "DATA_ROOT_ENV", "CLIP_BENCHMARK_DATASETS", "PAPER_TABLE3",
    "ClipBenchmarkClassification", "write_results", "read_results", "markdown_table", "compare_table", "evaluate",
]
