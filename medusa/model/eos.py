"""Stop tokens: the one reading of ``eos_token_id`` shared by the decode loop, the CLI and the evaluations."""

from transformers import PreTrainedModel


def eos_token_ids(base_model: PreTrainedModel, eos_token_id: int | list[int] | None = None,
                  tokenizer=None) -> list[int]:
    """The stop tokens, each once, in the order given.

    ``eos_token_id``: an id or ids (``[]``: none); None for the model's own: the base model's generation
    config's, else the tokenizer's EOS (when a tokenizer is given), else none.
    """
    if eos_token_id is None:
        eos_token_id = base_model.generation_config.eos_token_id
        if eos_token_id is None and tokenizer is not None:
            eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        return []
    return list(dict.fromkeys([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id))
