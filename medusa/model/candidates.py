"""Candidate generation: the tree's tokens from the base logits, the heads' top-k and text copied from
earlier in the sequence (prompt lookup)."""

import torch

from .posterior import leading_accepted
from .tree import TreeBuffers

# Copy branches by default: chains per tree, tokens per chain, and the longest n-gram matched (a longer
# match predicts its continuation better, so it ranks first).
COPY_CHAINS = 2
COPY_DEPTH = 10
COPY_NGRAM = 3


def copy_candidates(text: torch.Tensor, length: torch.Tensor, chains: int, depth: int,
                    max_ngram: int = COPY_NGRAM) -> torch.Tensor:
    """Prompt lookup on the device, with static shapes: the continuations of earlier occurrences of the text's end.

    For each row, the last n tokens of ``text[b, : length[b] + 1]`` (n = ``max_ngram`` down to 1) are
    looked for earlier in that text; each earlier end position p is scored by the longest n that
    matches there, ties broken by recency (larger p). The ``chains`` best positions each propose the
    ``depth`` tokens that followed them; a continuation that runs past the end of the text repeats its
    last token, and a row with fewer matches than ``chains`` gets the continuations of its latest
    unmatched positions. Neither matters for correctness: copied tokens are verified like any other candidate.

    Args:
        text: ``[batch, span]`` token ids; row b's text is its first ``length[b] + 1`` entries (the
            cached tokens, then the root).
        length: ``[batch]`` long (rows at or past ``span`` are searched as if ``span - 1`` long).

    Returns:
        ``[batch, chains, depth]`` long.
    """
    batch, span = text.shape
    length, matched = _ngram_matches(text, length, max_ngram)
    positions = torch.arange(span, device=text.device)
    # End positions before the query itself, so at least one token follows the match; without a match a
    # position ranks by recency alone, so filler chains are the same whatever the span (simulations match).
    score = torch.where(positions < length[:, None], matched * span + positions, -1 - positions)
    ends = score.topk(chains, dim=-1).indices  # [batch, chains]
    follow = ends[:, :, None] + 1 + torch.arange(depth, device=text.device)  # [batch, chains, depth]
    follow = torch.minimum(follow, length[:, None, None])
    return text.gather(1, follow.flatten(1)).view(batch, chains, depth)


def _ngram_matches(text: torch.Tensor, length: torch.Tensor, max_ngram: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The lengths clamped to the span, and ``[batch, span]``: the longest n-gram (up to ``max_ngram``) of the end of
    ``text[b, : length[b] + 1]`` that ends at each position p (0 where ``text[b, p]`` differs from the last token)."""
    span = text.shape[1]
    # A finished row waiting to leave the batch may be longer than the span of the live ones: its copies
    # are never used, but its indices must stay inside the text.
    length = length.clamp_max(span - 1)
    query = text.gather(1, (length[:, None] - torch.arange(max_ngram, device=text.device)).clamp_min(0))  # [batch, n]
    run = torch.ones_like(text, dtype=torch.bool)  # the k + 1 tokens ending at p match the text's end
    matched = torch.zeros_like(text)
    for k in range(max_ngram):
        shifted = torch.nn.functional.pad(text, (k, 0), value=-1)[:, :span]  # text[b, p - k]
        run = run & (shifted == query[:, k, None]) & (length[:, None] >= k)
        matched += run
    return length, matched


def copy_match(text: torch.Tensor, length: torch.Tensor, max_ngram: int = COPY_NGRAM) -> torch.Tensor:
    """``[batch]`` long: the longest n-gram (0 to ``max_ngram``) of the end of ``text[b, : length[b] + 1]`` that occurs
    earlier in it, the match :func:`copy_candidates` copies after; 0 when even the last token is new. Copied tokens
    are accepted far more often after a long match (docs/trees.md)."""
    length, matched = _ngram_matches(text, length, max_ngram)
    earlier = torch.arange(text.shape[1], device=text.device) < length[:, None]
    return torch.where(earlier, matched, 0).amax(-1)


def copy_agreement(texts: torch.Tensor, steps: torch.Tensor, chains: int, depth: int) -> torch.Tensor:
    """How many tokens the copy branches of a step would have got: ``[Q]`` long, the most leading tokens any chain
    shares with the text that follows.

    Args:
        texts: ``[Q, S]`` token ids, padded past each row's end with -1 (which matches no token).
        steps: ``[Q]`` long: the step after position t of row q, whose cached text is ``texts[q, : t + 1]`` and
            root ``texts[q, t + 1]``; its chains are accepted as far as they agree with ``texts[q, t + 2 :]``.
    """
    copies = copy_candidates(texts, steps + 1, chains, depth)  # [Q, chains, depth]; reads nothing past the root
    ahead = torch.nn.functional.pad(texts, (0, depth + 2), value=-1)
    target = ahead.gather(1, steps[:, None] + 2 + torch.arange(depth, device=texts.device))  # [Q, depth]
    return leading_accepted(copies == target[:, None]).amax(-1)


def generate_candidates(root: torch.Tensor, head_logits: torch.Tensor, buffers: TreeBuffers,
                        copies: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill each row's tree with tokens.

    Args:
        root: ``[batch]`` the token that follows each row's accepted sequence.
        head_logits: ``[batch, heads, V]`` the heads' logits at each row's last accepted position
            (unused for a tree without head nodes).
        buffers: the tree.
        copies: ``[batch, copy_chains, copy_depth]`` the copy branches' tokens (:func:`copy_candidates`),
            for a tree that has them.

    Returns:
        tree_candidates ``[batch, T]`` (one token per node, node order) and candidates
        ``[batch, leaves, depth + 1]`` (each root-to-leaf path's tokens; padding repeats the root).
    """
    flat = [root[:, None]]
    if buffers.head_depth:
        top = head_logits[:, : buffers.head_depth].topk(buffers.top_k, dim=-1).indices  # [batch, depth, top_k]
        flat.append(top.flatten(1))
    if buffers.copy_chains:
        flat.append(copies.flatten(1))
    tree_candidates = torch.cat(flat, dim=1)[:, buffers.tree_indices]
    return tree_candidates, tree_candidates[:, buffers.retrieve_indices]
