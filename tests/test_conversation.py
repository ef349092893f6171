"""Conversation rendering (chat template and FastChat template), save and load."""

import json

import pytest

from medusa.inference.conversation import Conversation
from tests.tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _history(conv):
    conv.add("user", "hi")
    conv.add("assistant", "hello")
    conv.add("user", "how are you?")
    return conv


def test_chat_template_rendering_with_system_message(tokenizer):
    conv = _history(Conversation(system="Be brief."))
    prompt = tokenizer.decode(conv.input_ids(tokenizer)[0])
    assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                      "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nhow are you?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    assert conv.roles == ("user", "assistant") and conv.stop_strings == [] and conv.stop_token_ids == []


def test_fastchat_template_rendering(tokenizer):
    conv = _history(Conversation(system="Be brief.", fastchat_template="vicuna_v1.1"))
    assert tokenizer.decode(conv.input_ids(tokenizer)[0]) == "Be brief. USER: hi ASSISTANT: hello</s>USER: how are you? ASSISTANT:"
    assert conv.roles == ("USER", "ASSISTANT")
    default = Conversation(fastchat_template="vicuna_v1.1")
    default.add("user", "hi")
    assert tokenizer.decode(default.input_ids(tokenizer)[0]).startswith("A chat between a curious user")


def test_fastchat_stop_strings_and_unknown_template():
    robin = Conversation(fastchat_template="Robin")
    assert (robin.stop_strings, robin.stop_token_ids) == (["###"], [2, 396])
    with pytest.raises(ValueError, match=r"Unknown conversation template 'vicuna' \(did you mean vicuna_v1\.1"):
        Conversation(fastchat_template="vicuna")


def test_save_load_round_trip_and_bad_file(tmp_path):
    conv = _history(Conversation(system="Be brief."))
    conv.save(tmp_path / "chat.json")
    loaded = Conversation()
    loaded.load(tmp_path / "chat.json")
    assert (loaded.system, loaded.messages) == ("Be brief.", conv.messages)
    (tmp_path / "bad.json").write_text(json.dumps({"messages": [{"role": "wizard", "content": "x"}]}))
    with pytest.raises(ValueError, match="is not a saved conversation"):
        loaded.load(tmp_path / "bad.json")
    assert loaded.messages == conv.messages
