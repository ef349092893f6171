"""Speed of two answer files (Medusa vs a baseline) from their recorded per-turn timings."""

import collections


def _totals(answer: dict) -> tuple[int, int, float]:
    """(new tokens, steps, seconds) over every turn of every choice of one answer line."""
    choices = answer["choices"]
    return (sum(sum(c["new_tokens"]) for c in choices), sum(sum(c["steps"]) for c in choices),
            sum(sum(c["wall_time"]) for c in choices))


def _figures(pairs: list[tuple[dict, dict]]) -> dict:
    medusa = [_totals(m) for m, _ in pairs]
    baseline = [_totals(b) for _, b in pairs]
    m_tokens, m_steps, m_s = (sum(x) for x in zip(*medusa))
    b_tokens, b_steps, b_s = (sum(x) for x in zip(*baseline))
    m_tok_s, b_tok_s = m_tokens / m_s, b_tokens / b_s
    return {"questions": len(pairs), "medusa_tok_s": m_tok_s, "baseline_tok_s": b_tok_s,
            "medusa_tokens_per_step": m_tokens / m_steps, "baseline_tokens_per_step": b_tokens / b_steps,
            "speedup": m_tok_s / b_tok_s}


def speed_summary(medusa: dict, baseline: dict, questions: list[dict]) -> dict:
    """Tokens/s, tokens/step and speedup, overall and per category, on the questions both files answered.

    Args:
        medusa, baseline: ``{question_id: answer line}`` (see :func:`medusa.eval.answers.read_answers`).
        questions: the question file's questions (for their categories).

    Returns:
        ``{"overall": figures, "categories": {category: figures}}``; figures hold ``questions``,
        ``medusa_tok_s``, ``baseline_tok_s``, ``medusa_tokens_per_step``, ``baseline_tokens_per_step``
        and ``speedup`` (Medusa tokens/s over baseline tokens/s); each is a ratio of sums over all turns.
    """
    by_category = collections.defaultdict(list)
    for q in questions:
        qid = q["question_id"]
        if qid in medusa and qid in baseline:
            by_category[q["category"]].append((medusa[qid], baseline[qid]))
    if not by_category:
        raise ValueError("The two answer files have no question of the question file in common.")
    everything = [pair for pairs in by_category.values() for pair in pairs]
    return {"overall": _figures(everything), "categories": {c: _figures(p) for c, p in sorted(by_category.items())}}
