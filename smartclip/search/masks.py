"""Which image-embedding dimensions captions select (SmartCLIP's mask), and mask algebra.

A caption's mask is the hard 0/1 mask of ``model.text_mask`` (sigmoid >= 0.5). Overlaps
between captions, and expressions such as ``1 & 2`` (dimensions both select), ``1 | 2``,
``1 - 2`` (selected by 1, not by 2), ``1 ^ 2`` and ``~1`` over caption numbers (1-based,
as printed) show which blocks of concepts captions share or differ in (docs/method.md §1).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch

__all__ = ["MaskReport", "caption_masks", "mask_expression", "plot_masks", "MaskExpressionError"]


class MaskExpressionError(ValueError):
    """A mask expression that is not valid or names a caption that does not exist."""


@dataclass
class MaskReport:
    captions: List[str]
    masks: np.ndarray  # bool [n, embed_dim]
    probs: np.ndarray  # float [n, embed_dim], sigmoid of the mask logits
    truncated: List[bool]
    mask_trained: bool = True

    @property
    def embed_dim(self) -> int:
        return int(self.masks.shape[1])

    @property
    def counts(self) -> np.ndarray:
        return self.masks.sum(axis=1)

    @property
    def overlap(self) -> np.ndarray:
        """``[n, n]`` number of dimensions both captions select (diagonal: the counts)."""
        m = self.masks.astype(np.int64)
        return m @ m.T

    @property
    def jaccard(self) -> np.ndarray:
        inter = self.overlap
        union = self.counts[:, None] + self.counts[None, :] - inter
        return np.where(union > 0, inter / np.maximum(union, 1), 1.0)

    def selected(self, i: int) -> List[int]:
        return np.flatnonzero(self.masks[i]).tolist()

    def evaluate(self, expression: str) -> np.ndarray:
        return mask_expression(expression, self.masks)

    def to_dict(self, expressions: Sequence[str] = ()) -> dict:
        return {
            "embed_dim": self.embed_dim,
            "mask_trained": self.mask_trained,
            "captions": [{"number": i + 1, "text": c, "count": int(self.counts[i]), "dims": self.selected(i),
                          "truncated": bool(self.truncated[i])} for i, c in enumerate(self.captions)],
            "overlap": self.overlap.tolist(),
            "jaccard": np.round(self.jaccard, 4).tolist(),
            "expressions": [{"expression": e, "dims": np.flatnonzero(self.evaluate(e)).tolist(),
                             "count": int(self.evaluate(e).sum())} for e in expressions],
        }


@torch.no_grad()
def caption_masks(model, tokenizer, captions: Sequence[str], device="cpu", batch_size: int = 256) -> MaskReport:
    """The hard masks (and probabilities) ``model`` predicts for ``captions``."""
    captions = list(captions)
    if not captions:
        raise ValueError("no captions given")
    for i, c in enumerate(captions):
        if not isinstance(c, str) or not c.strip():
            raise ValueError(f"caption {i + 1} is empty")
    model.eval()
    probs, truncated = [], []
    for lo in range(0, len(captions), batch_size):
        tokens, trunc = tokenizer.tokenize(captions[lo:lo + batch_size])
        probs.append(model.text_mask(tokens.to(device), soft=True).float().cpu())
        truncated += trunc.tolist()
    p = torch.cat(probs).numpy()
    return MaskReport(captions=captions, masks=p >= 0.5, probs=p, truncated=truncated,
                      mask_trained=model.mask_trained)


_OPS = {ast.BitAnd: np.logical_and, ast.BitOr: np.logical_or, ast.BitXor: np.logical_xor,
        ast.Sub: lambda a, b: np.logical_and(a, np.logical_not(b))}


def mask_expression(expression: str, masks: np.ndarray) -> np.ndarray:
    """Evaluate ``expression`` over the rows of ``masks`` (bool [n, d]); caption numbers are
    1-based. Operators: ``&`` intersection, ``|`` union, ``-`` difference, ``^`` symmetric
    difference, ``~`` complement, parentheses. Python precedence applies (``-`` before ``&``,
    ``&`` before ``^`` before ``|``), so write ``(1 & 2) - 3`` when in doubt."""
    masks = np.asarray(masks, dtype=bool)
    n = masks.shape[0]
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise MaskExpressionError(f"mask expression {expression!r} is not valid: {e.msg}; "
                                  "example: '1 & 2', '(1 | 2) - 3', '~1'") from None

    def walk(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            if not 1 <= node.value <= n:
                raise MaskExpressionError(f"mask expression {expression!r}: caption {node.value} does not exist "
                                          f"(there are {n}, numbered 1..{n})")
            return masks[node.value - 1]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
            return np.logical_not(walk(node.operand))
        raise MaskExpressionError(f"mask expression {expression!r}: {ast.unparse(node)!r} is not allowed; use caption "
                                  "numbers with & | - ^ ~ and parentheses")

    return walk(tree.body)


def plot_masks(report: MaskReport, path, expressions: Sequence[str] = ()) -> Path:
    """A PNG: each caption's (and expression's) selected dimensions as a row of cells, and
    the caption-by-caption overlap counts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [report.masks[i] for i in range(len(report.captions))] + [report.evaluate(e) for e in expressions]
    labels = [f"{i + 1}: {c[:40] + ('...' if len(c) > 40 else '')} ({int(report.counts[i])})"
              for i, c in enumerate(report.captions)]
    labels += [f"{e} ({int(report.evaluate(e).sum())})" for e in expressions]
    n = len(report.captions)
    fig, (ax_mask, ax_overlap) = plt.subplots(
        1, 2, figsize=(min(4 + report.embed_dim * 0.06, 16) + 1 + 0.5 * n, 1.2 + 0.4 * len(rows)),
        gridspec_kw={"width_ratios": [max(report.embed_dim / 16, 2), max(n / 2, 1)]})
    ax_mask.imshow(np.stack(rows).astype(float), aspect="auto", cmap="Greys", vmin=0, vmax=1,
                   interpolation="nearest")
    ax_mask.set_yticks(range(len(rows)), labels, fontsize=8)
    ax_mask.set_xlabel(f"embedding dimension (of {report.embed_dim})")
    ax_mask.set_title("selected dimensions" + ("" if report.mask_trained else " (untrained mask network)"))
    ax_overlap.imshow(report.overlap, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax_overlap.text(j, i, str(report.overlap[i, j]), ha="center", va="center", fontsize=8)
    ax_overlap.set_xticks(range(n), [str(i + 1) for i in range(n)])
    ax_overlap.set_yticks(range(n), [str(i + 1) for i in range(n)])
    ax_overlap.set_title("shared dimensions")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
