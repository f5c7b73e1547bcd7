"""The embedded scene benchmark: synthetic scenes with known concepts (``generator``),
and the metrics that test SmartCLIP's claims on them (``evaluate.SceneBenchmark``)."""
from .generator import (CONCEPTS, COLOURS, POSITIONS, SIZES, Concept, Scene, SceneGenerator, SceneObject,
                        concept_prompt, generate_scenes, load_labels, long_caption, object_phrase,
                        short_caption, write_dataset)

__all__ = ["CONCEPTS", "COLOURS", "POSITIONS", "SIZES", "Concept", "Scene", "SceneGenerator",
           "SceneObject", "concept_prompt", "generate_scenes", "load_labels", "long_caption",
           "object_phrase", "short_caption", "write_dataset", "SceneBenchmark"]


def __getattr__(name):  # evaluate imports torch-heavy code; load it only when asked
    if name == "SceneBenchmark":
        from .evaluate import SceneBenchmark
        return SceneBenchmark
    raise AttributeError(name)
