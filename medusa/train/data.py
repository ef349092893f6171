"""Training conversations: loading, chat-template rendering with an assistant mask, labels.

Conversations are lists of ``{"role", "content"}`` messages. They are read from

- JSONL written by ``data_generation/generate.py``: ``{"id", "sample", "messages": [...]}`` per line;
- ShareGPT JSON (a list of ``{"conversations": [{"from", "value"}, ...]}``, or the same as JSONL);
- a JSON list of message lists (the output of the FasterDecoding ``create_data.py``).

Labels: only the tokens an assistant message adds are targets (its content and
the end-of-turn token, EOS included); the role header and everything else is ``IGNORE_INDEX``.
"""

import json
from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from medusa.jsonl import located, parse_jsonl

IGNORE_INDEX = -100
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant",
                  "bing": "assistant", "assistant": "assistant", "system": "system"}


def _to_messages(record) -> list[dict]:
    """One record of any supported format -> a list of ``{"role", "content"}`` messages."""
    if isinstance(record, dict):
        for key in ("messages", "conversation", "conversations"):
            if key in record:
                record = record[key]
                break
        else:
            raise ValueError(f"A record has none of the keys messages/conversation/conversations: {sorted(record)}")
    messages = []
    for turn in record:
        if "from" in turn:  # ShareGPT
            role = SHAREGPT_ROLES.get(turn["from"])
            if role is None:
                raise ValueError(f"Unknown ShareGPT speaker {turn['from']!r}.")
            messages.append({"role": role, "content": turn["value"]})
        else:
            messages.append({"role": turn["role"], "content": turn["content"]})
    return messages


def read_records(path: str) -> list:
    """The records of a JSON file (a list, or one object) or of a JSONL file (one per line); a malformed
    file raises ``ValueError`` naming the file and the line."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" or not text.strip():  # several values (or none): JSONL
            return parse_jsonl(text, path)
        raise located(e, path, e.lineno) from None  # one broken JSON document, or a broken first line
    return records if isinstance(records, list) else [records]


def load_conversations(path: str) -> list[list[dict]]:
    """Every conversation in a ``.json`` or ``.jsonl`` file, as message lists (see the module docstring)."""
    conversations = []
    for record in read_records(path):
        messages = _to_messages(record)
        while messages and messages[0]["role"] == "assistant":  # ShareGPT dumps sometimes open with the bot
            messages.pop(0)
        if any(m["role"] == "assistant" for m in messages):
            conversations.append(messages)
    return conversations


def chat_renderer(tokenizer, model_name_or_path: str | None = None) -> Callable[[list[dict], bool], str]:
    """``render(messages, add_generation_prompt) -> str`` from the tokenizer's chat template.

    Tokenizers without a template (Vicuna, older Llama fine-tunes) use FastChat's conversation
    template for ``model_name_or_path`` (imported only then).
    """
    if tokenizer.chat_template is not None:
        return lambda messages, add_generation_prompt: tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    from fastchat.model.model_adapter import get_conversation_template

    template = get_conversation_template(model_name_or_path or tokenizer.name_or_path)

    def render(messages: list[dict], add_generation_prompt: bool) -> str:
        conv = template.copy()
        conv.messages = []
        for m in messages:
            if m["role"] == "system":
                conv.set_system_message(m["content"])
            else:
                conv.append_message(conv.roles[0] if m["role"] == "user" else conv.roles[1], m["content"])
        if add_generation_prompt:
            conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    return render


def assistant_char_spans(render, messages: list[dict], eos_text: str | None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans ``[start, end)`` of its assistant targets.

    Each assistant message's span is what rendering it adds after the prefix rendered with the
    generation prompt (so the role header is excluded), cut after the last EOS text in it (so the
    separator a template writes after EOS, e.g. ChatML's newline, is not a target).
    """
    full = render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, through = render(messages[:i], True), render(messages[: i + 1], False)
        if not (full.startswith(through) and through.startswith(before)):
            raise ValueError("The chat template does not render conversations prefix by prefix; "
                             "cannot locate the assistant tokens.")
        end = len(through)
        if eos_text and eos_text in through[len(before):]:
            end = through.rindex(eos_text, len(before)) + len(eos_text)
        spans.append((len(before), end))
    return full, spans


def tokenize_conversation(tokenizer, render, messages: list[dict], max_length: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``labels`` ``[seq]`` (``labels`` = ids on assistant targets, else ``IGNORE_INDEX``).

    A token is a target when it starts inside an assistant span. Truncated to ``max_length``.
    """
    text, spans = assistant_char_spans(render, messages, tokenizer.eos_token)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = torch.tensor(enc["input_ids"][:max_length], dtype=torch.long)
    starts = torch.tensor([s for s, _ in enc["offset_mapping"][:max_length]], dtype=torch.long)
    target = torch.zeros_like(input_ids, dtype=torch.bool)
    for start, end in spans:
        target |= (starts >= start) & (starts < end)
    labels = torch.where(target, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return {"input_ids": input_ids, "labels": labels}


class ConversationDataset(Dataset):
    """Conversations tokenized on access (large files start training at once)."""

    def __init__(self, conversations: list[list[dict]], tokenizer, render, max_length: int):
        self.conversations, self.tokenizer, self.render, self.max_length = conversations, tokenizer, render, max_length

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return tokenize_conversation(self.tokenizer, self.render, self.conversations[i], self.max_length)


class PadCollator:
    """Right-pads ``input_ids`` (pad id), ``labels`` (``IGNORE_INDEX``) and builds ``attention_mask`` ``[B, S]``."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        pad = torch.nn.utils.rnn.pad_sequence
        input_ids = pad([f["input_ids"] for f in features], batch_first=True, padding_value=self.pad_token_id)
        labels = pad([f["labels"] for f in features], batch_first=True, padding_value=IGNORE_INDEX)
        lengths = torch.tensor([len(f["input_ids"]) for f in features])
        attention_mask = (torch.arange(input_ids.shape[1])[None] < lengths[:, None]).long()
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
