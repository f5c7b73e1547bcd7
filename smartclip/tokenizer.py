"""CLIP BPE tokenisation at the model's (long) context, with truncation reported.

A leaf of the package: imports nothing from smartclip. ``smartclip.get_tokenizer`` (a tokenizer
for a model, a model name or a checkpoint) lives in :mod:`smartclip.factory`, which knows names."""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch
from open_clip.tokenizer import SimpleTokenizer

__all__ = ["Tokenizer", "split_sentences", "DEFAULT_CONTEXT_LENGTH", "PERIOD_TOKEN_ID"]

DEFAULT_CONTEXT_LENGTH = 248
PERIOD_TOKEN_ID = 269  # "." as a word end in CLIP's BPE vocabulary


class Tokenizer:
    """open_clip's CLIP tokenizer at ``context_length`` that counts what it truncates.

    A text longer than the context keeps its first ``context_length - 1`` tokens and
    ends with the end-of-text token, as open_clip does. ``tokenize`` returns which rows
    were truncated; ``num_truncated`` / ``num_texts`` accumulate over calls (reset with
    ``reset_counts``) so training and evaluation logs can report it.
    """

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH):
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2, got {context_length}")
        self._bpe = SimpleTokenizer(context_length=context_length)
        self.context_length = context_length
        self.sot_token_id = self._bpe.sot_token_id
        self.eot_token_id = self._bpe.eot_token_id
        self.vocab_size = len(self._bpe.encoder)
        self.num_truncated = 0
        self.num_texts = 0

    def reset_counts(self):
        self.num_truncated = self.num_texts = 0

    def encode(self, text: str) -> List[int]:
        """BPE ids of one text without start / end tokens."""
        return self._bpe.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._bpe.decode([int(i) for i in ids if int(i) not in (0, self.sot_token_id, self.eot_token_id)])

    def tokenize(self, texts: Union[str, Sequence[str]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [n, context] long, truncated [n] bool)``."""
        if isinstance(texts, str):
            texts = [texts]
        n, ctx = len(texts), self.context_length
        tokens = torch.zeros(n, ctx, dtype=torch.long)
        truncated = torch.zeros(n, dtype=torch.bool)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is {type(text).__name__}, expected str")
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > ctx:
                ids = ids[:ctx]
                ids[-1] = self.eot_token_id
                truncated[i] = True
            tokens[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        self.num_truncated += int(truncated.sum())
        self.num_texts += n
        return tokens, truncated

    def __call__(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        return self.tokenize(texts)[0]

    def __repr__(self) -> str:
        return f"Tokenizer(context_length={self.context_length})"


def split_sentences(tokens: torch.Tensor, eot_positions: torch.Tensor, period_token_id: int = PERIOD_TOKEN_ID
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each caption's sentences as captions of their own: ``(sentences [S, context], owner [S])``.

    Row ``i`` of ``tokens`` is ``[SOT, t_1 .. t_n, EOT, 0 ...]`` with its EOT at
    ``eot_positions[i]``; its text is cut after every ``period_token_id`` (the sentence keeps its
    period), empty pieces are dropped, and each piece becomes ``[SOT, piece, EOT]`` padded with
    zeros. ``owner[k]`` is the row sentence ``k`` came from. A caption with one sentence gives
    one row (itself)."""
    rows, owner = [], []
    for i, end in enumerate(eot_positions.tolist()):
        sot, eot = tokens[i, 0], tokens[i, end]
        body = tokens[i, 1:end]
        cuts = (body == period_token_id).nonzero().flatten().add(1).tolist()
        for start, stop in zip([0] + cuts, cuts + [len(body)]):
            if stop > start:
                row = tokens.new_zeros(tokens.shape[1])
                row[0], row[1:stop - start + 1], row[stop - start + 1] = sot, body[start:stop], eot
                rows.append(row)
                owner.append(i)
    if not rows:
        return tokens.new_zeros((0, tokens.shape[1])), tokens.new_zeros(0)
    return torch.stack(rows), torch.tensor(owner, dtype=torch.long, device=tokens.device)
