"""``evaluate``: run benchmarks by spec on one model, cache features, write the results."""
from __future__ import annotations

import datetime
import platform
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .benchmark import DatasetNotFoundError, FeatureCache
from .registry import absent_result, expand_suites, get_benchmark
from .results import RESULTS_FORMAT, write_results

__all__ = ["evaluate", "run_record", "plan_evaluation", "EvaluationPlan", "MissingDataError"]


class MissingDataError(DatasetNotFoundError):
    """Members of a suite have no data. ``str()`` is short: how many are missing, where the
    first was looked for and the names of a few others; :meth:`details` lists every one with
    the layouts looked for."""

    def __init__(self, missing: Dict[str, str], total: int):
        self.missing, self.total = dict(missing), total
        texts = list(self.missing.values())
        names = [text.split(":", 1)[0] for text in texts]
        message = (f"no data for {len(texts)} of {total} benchmarks (nothing is downloaded); the first: "
                   f"{texts[0].splitlines()[0]}")
        if len(names) > 1:
            shown = names[1:6]
            message += f"; also missing: {', '.join(shown)}" + (f" and {len(names) - 1 - len(shown)} more"
                                                                 if len(names) > 6 else "")
        message += ". Allow partial results (--allow-partial) to run the others"
        super().__init__(message)

    def details(self) -> str:
        """Every missing member, with the paths and layouts looked for."""
        return "\n".join(self.missing.values())


@dataclass
class EvaluationPlan:
    """The benchmarks of one evaluation, built and checked before any model is loaded."""
    members: List[Tuple[str, Optional[str]]]  # (spec, suite it came from or None)
    absent: Dict[str, str]                    # suite members without data: spec -> what was looked for
    benchmarks: Dict[str, object]             # spec -> Benchmark


def plan_evaluation(specs: Sequence[str], *, root=None, allow_partial: bool = False,
                    options: Optional[Dict[str, dict]] = None, num_workers: int = 0) -> EvaluationPlan:
    """Resolve ``specs`` (suites expanded) and build each benchmark, without a model: an unknown
    name, a missing data root or an options typo fails here, in seconds, before the model is
    loaded. Suite members without data raise :class:`MissingDataError` unless ``allow_partial``."""
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise ValueError("no benchmarks given; see smartclip.eval.list_benchmarks()")
    options = dict(options or {})
    unknown = set(options) - set(specs)
    if unknown:
        raise ValueError(f"options given for benchmarks that are not run: {sorted(unknown)}")
    members, absent = expand_suites(specs, root)
    if absent and not allow_partial:
        raise MissingDataError(absent, len(members))
    benches = {}
    for spec, suite in members:
        if spec in absent:
            continue
        opts = {**options.get(suite, {}), **options.get(spec, {})}
        if num_workers and not spec.startswith("scenes:"):  # our file benchmarks take it
            opts.setdefault("num_workers", num_workers)
        benches[spec] = get_benchmark(spec, root=root, **opts)
    return EvaluationPlan(members, absent, benches)


def run_record(model, results: Dict[str, dict], checkpoint_hash: str, model_label: Optional[str] = None,
               device="cpu") -> dict:
    """The JSON document of a run: what was evaluated, how, and the per-benchmark results."""
    import smartclip
    return {
        "format": RESULTS_FORMAT,
        "model": model_label or model.model_name,
        "checkpoint_hash": checkpoint_hash,
        "context_length": model.context_length,
        "embed_dim": model.embed_dim,
        "mask_trained": model.mask_trained,
        "training": model.training_info,
        "smartclip_version": smartclip.__version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "host": platform.node(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "results": results,
    }


def evaluate(model, specs: Sequence[str], *, root=None, device="cpu", batch_size: int = 64, out_dir=None,
             allow_partial: bool = False, progress: bool = True, cache_dir=None,
             options: Optional[Dict[str, dict]] = None, model_label: Optional[str] = None,
             num_workers: int = 0, feature_cache: Optional[FeatureCache] = None,
             plan: Optional[EvaluationPlan] = None) -> Dict[str, dict]:
    """Evaluate ``model`` on each benchmark spec (see :func:`get_benchmark`; a suite name such as
    ``paper-zeroshot`` stands for its members, and ``options`` for it apply to each) and return
    ``{spec: result}``. The model is put in eval mode and restored afterwards (the training
    loop calls this). Features are cached per model weights (``state_dict_hash``) and
    benchmark inputs, in memory and under ``cache_dir`` when given. With ``out_dir``,
    writes ``eval_<hash>.json`` and ``eval_<hash>.md``. ``options[spec]`` holds extra
    factory options for one spec (e.g. ``{"coco": {"masked": True}}``); ``num_workers``
    image-loading processes. A benchmark with missing data raises
    :class:`IncompleteBenchmarkError` unless ``allow_partial`` (a suite member with no data at
    all then appears with empty metrics, marked partial). ``plan``: :func:`plan_evaluation` of
    these arguments, when the caller checked the data before loading the model."""
    import smartclip
    if plan is None:  # building every benchmark first: a typo or a missing root fails before any encoding
        plan = plan_evaluation(specs, root=root, allow_partial=allow_partial, options=options,
                               num_workers=num_workers)
    absent, benches = plan.absent, plan.benchmarks
    checkpoint_hash = smartclip.state_dict_hash(model)
    cache = feature_cache if feature_cache is not None else FeatureCache(checkpoint_hash, cache_dir)
    tokenizer = smartclip.get_tokenizer(model)
    preprocess = smartclip.image_transform(model, train=False)
    was_training = model.training
    model.eval()
    results: Dict[str, dict] = {spec: absent_result(spec, looked_for) for spec, looked_for in absent.items()}
    try:
        for spec, bench in benches.items():
            started = time.time()
            result = bench.run(model, tokenizer=tokenizer, preprocess=preprocess, device=device,
                               batch_size=batch_size, allow_partial=allow_partial, progress=progress,
                               feature_cache=cache)
            result.setdefault("seconds", round(time.time() - started, 2))
            result["context_length"] = tokenizer.context_length
            results[spec] = result
    finally:
        model.train(was_training)
    if out_dir is not None:
        write_results(run_record(model, results, checkpoint_hash, model_label, device), out_dir,
                      f"eval_{checkpoint_hash}")
    return results
