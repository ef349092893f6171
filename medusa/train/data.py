"""Training conversations: loading, chat-template rendering with an assistant mask, labels.

Conversations are lists of ``{"role", "content"}`` messages. They are read from

- JSONL written by ``data_generation/generate.py``: ``{"id", "sample", "messages": [...]}`` per line;
- ShareGPT JSON (a list of ``{"conversations": [{"from", "value"}, ...]}``, or the same as JSONL);
- a JSON list of message lists (the output of the FasterDecoding ``create_data.py``).

Only the tokens an assistant message adds are targets (its content and the end-of-turn token, EOS
included); the role header and everything else is ``IGNORE_INDEX``. Conversations with a role other than
system/user/assistant, without an assistant message, or without a target token within the length limit
are skipped and counted (:class:`DataSummary`).
"""

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from medusa.jsonl import jsonl_lines, located

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")  # a conversation with any other role is skipped (and counted)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant",
                  "bing": "assistant", "assistant": "assistant", "system": "system"}


class DataError(ValueError):
    """Training data that cannot be used; the message names the file and the line (or record)."""


@dataclass
class DataSummary:
    """What a data file gave: conversations read and kept, and why the others were dropped."""

    path: str
    max_length: int = 0
    read: int = 0
    kept: int = 0
    with_unknown_roles: int = 0
    unknown_roles: Counter = field(default_factory=Counter)
    without_reply: int = 0  # no assistant message at all
    truncated_conversations: int = 0  # every assistant message beyond --model_max_length
    truncated_turns: int = 0  # assistant messages beyond it in the kept conversations

    def problems(self) -> list[str]:
        roles = ", ".join(f"{role!r} x{n}" for role, n in self.unknown_roles.most_common())
        skipped = [(self.with_unknown_roles, f"with unknown roles ({roles}; known: {', '.join(ROLES)})"),
                   (self.without_reply, "without an assistant message"),
                   (self.truncated_conversations, f"with every assistant message beyond --model_max_length "
                                                  f"{self.max_length} tokens")]
        problems = [f"skipped {n} conversation(s) {why}" for n, why in skipped if n]
        if self.truncated_turns:
            problems.append(f"{self.truncated_turns} assistant message(s) of kept conversations lie beyond "
                            f"--model_max_length {self.max_length} tokens and are not trained on")
        return problems

    def describe(self) -> str:
        return "; ".join([f"{self.path}: {self.kept} of {self.read} conversations kept", *self.problems()]) + "."


def _to_messages(record, where: str) -> list[dict]:
    """One record of any supported format -> a list of ``{"role", "content"}`` messages (roles as written)."""
    if isinstance(record, dict):
        for key in ("messages", "conversation", "conversations"):
            if key in record:
                record = record[key]
                break
        else:
            raise DataError(f"{where}: none of the keys messages/conversation/conversations (has {sorted(record)}).")
    if not isinstance(record, list) or not all(isinstance(turn, dict) for turn in record):
        raise DataError(f"{where}: not a conversation (a list of messages).")
    messages = []
    for j, turn in enumerate(record):
        role_key, content_key = ("from", "value") if "from" in turn else ("role", "content")  # ShareGPT or ours
        for key in (role_key, content_key):
            if key not in turn:
                raise DataError(f"{where}: message {j} has no {key!r} (has {sorted(turn)}).")
        if not isinstance(turn[content_key], str):
            raise DataError(f"{where}: message {j}'s {content_key!r} is not a string.")
        role = SHAREGPT_ROLES.get(turn["from"], turn["from"]) if role_key == "from" else turn["role"]
        messages.append({"role": role, "content": turn[content_key]})
    return messages


def located_records(path: str) -> list[tuple[str, object]]:
    """``(where, record)`` of every record of a JSON file (a list, or one object) or a JSONL file (one per line).

    ``where`` is ``"path, line n"`` for JSONL, ``"path, record i"`` for a JSON list, for error messages; a
    malformed file raises :class:`DataError` naming the file and the line.
    """
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}).") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg != "Extra data" and text.strip():  # one broken JSON document, or a broken first line
            raise DataError(str(located(e, path, e.lineno))) from None
        return _jsonl_records(path, text)
    if not isinstance(records, list):  # one object: a one-line JSONL file, say
        return [(f"{path}, line 1", records)]
    return [(f"{path}, record {i}", r) for i, r in enumerate(records)]


def _jsonl_records(path: str, text: str) -> list[tuple[str, object]]:
    records = []
    for number, line in jsonl_lines(text):
        try:
            records.append((f"{path}, line {number}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(str(located(e, path, number))) from None
    return records


def read_records(path: str) -> list:
    """The records of a JSON file (a list, or one object) or of a JSONL file (one per line)."""
    return [record for _, record in located_records(path)]


def load_conversations(path: str) -> list[list[dict]]:
    """Every conversation of a ``.json`` or ``.jsonl`` file with known roles and an assistant message."""
    return [messages for _, messages in _conversations(path, DataSummary(path))]


def _conversations(path: str, summary: DataSummary, limit: int | None = None) -> list[tuple[str, list[dict]]]:
    """``(where, messages)`` of those of the first ``limit`` records with known roles and a reply; drops counted."""
    kept = []
    for where, record in located_records(path)[:limit]:
        messages = _to_messages(record, where)
        summary.read += 1
        unknown = [m["role"] for m in messages if m["role"] not in ROLES]
        if unknown:
            summary.unknown_roles.update(unknown)
            summary.with_unknown_roles += 1
            continue
        while messages and messages[0]["role"] == "assistant":  # ShareGPT dumps sometimes open with the bot
            messages.pop(0)
        if not any(m["role"] == "assistant" for m in messages):
            summary.without_reply += 1
            continue
        kept.append((where, messages))
    return kept


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


def _tokens_and_turns(tokenizer, render, messages: list[dict], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` ``[seq]`` (truncated to ``max_length``) and ``turns`` ``[assistant messages, seq]``.

    ``turns[i, t]``: token t is a target of assistant message i, that is, it starts inside its span.
    """
    text, spans = assistant_char_spans(render, messages, tokenizer.eos_token)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = torch.tensor(enc["input_ids"][:max_length], dtype=torch.long)
    starts = torch.tensor([s for s, _ in enc["offset_mapping"][:max_length]], dtype=torch.long)
    bounds = torch.tensor(spans, dtype=torch.long).reshape(-1, 2)
    return input_ids, (starts >= bounds[:, :1]) & (starts < bounds[:, 1:])


def tokenize_conversation(tokenizer, render, messages: list[dict], max_length: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``labels`` ``[seq]`` (``labels`` = ids on assistant targets, else ``IGNORE_INDEX``).

    A token is a target when it starts inside an assistant span. Truncated to ``max_length``.
    """
    input_ids, turns = _tokens_and_turns(tokenizer, render, messages, max_length)
    labels = torch.where(turns.any(0), input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return {"input_ids": input_ids, "labels": labels}


def load_training_conversations(path: str, tokenizer, render, max_length: int,
                                limit: int | None = None) -> tuple[list[list[dict]], DataSummary]:
    """The conversations of the first ``limit`` records that keep a target token within ``max_length``.

    Each is tokenized once here to count its targets (and again on access in training).
    """
    summary = DataSummary(path, max_length)
    kept = []
    for where, messages in _conversations(path, summary, limit):
        try:
            _, turns = _tokens_and_turns(tokenizer, render, messages, max_length)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        alive = turns.any(1)
        if not alive.any():
            summary.truncated_conversations += 1
            continue
        summary.truncated_turns += int((~alive).sum())
        kept.append(messages)
    summary.kept = len(kept)
    return kept, summary


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
