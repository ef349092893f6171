"""Stop tokens: one reading of ``eos_token_id`` (medusa.model.eos), and the decode loop and the evaluations'
decoders stopping where plain greedy decoding reaches it."""

import torch

from medusa.eval.answers import hf_decoder
from medusa.eval.heads_accuracy import greedy_continuations
from medusa.model.eos import eos_token_ids
from tests.fitting import greedy_reference
from tests.test_generate import prompts, random_heads
from tests.tiny import tiny_model, tiny_tokenizer


def test_stop_tokens_are_the_ids_given_else_the_generation_configs_else_the_tokenizers():
    base, tokenizer = tiny_model("llama", seed=20), tiny_tokenizer()
    ids = torch.randint(3, 320, (4,), generator=torch.Generator().manual_seed(20)).tolist()
    base.generation_config.eos_token_id = ids + ids[:2]
    assert eos_token_ids(base) == eos_token_ids(base, tokenizer=tokenizer) == list(dict.fromkeys(ids))
    assert eos_token_ids(base, ids[3], tokenizer) == [ids[3]]
    assert eos_token_ids(base, [], tokenizer) == []  # none asked for: no fallback
    base.generation_config.eos_token_id = ids[0]
    assert eos_token_ids(base) == [ids[0]]
    base.generation_config.eos_token_id = None
    assert eos_token_ids(base) == []
    assert eos_token_ids(base, tokenizer=tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_the_loop_and_the_evaluations_stop_at_the_tokenizers_eos_when_the_config_names_none():
    model = random_heads(tiny_model("llama", seed=21), 3, "own_lm_head", seed=21)
    model.base_model.generation_config.eos_token_id = None
    input_ids = prompts(104, 1)[0]
    reference = greedy_reference(model.base_model, input_ids, 30, eos_token_id=[])
    position = next(i for i in range(5, 30) if reference.index(reference[i]) == i)  # a first occurrence mid-reply
    model.tokenizer = tiny_tokenizer()
    model.tokenizer.eos_token = model.tokenizer.convert_ids_to_tokens(reference[position])
    expected = reference[: position + 1]
    assert model.generate(input_ids, max_new_tokens=30) == [expected]
    assert hf_decoder(model.base_model, 30, tokenizer=model.tokenizer)(input_ids) == (expected, len(expected))
    assert greedy_continuations(model.base_model, [input_ids], 30, tokenizer=model.tokenizer)[0][input_ids.shape[1]:].tolist() == expected
