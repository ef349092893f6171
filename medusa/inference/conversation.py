"""A chat history and its rendering into prompt tokens.

Rendering uses the tokenizer's own chat template, or a FastChat conversation template for models that
have none (e.g. Vicuna). Histories are saved and loaded as JSON: ``{"system": str | null,
"messages": [{"role": "user" | "assistant", "content": str}, ...]}``.
"""

import difflib
import json

import torch

USER, ASSISTANT = "user", "assistant"


class Conversation:
    """Messages of one chat, rendered with a chat template or a FastChat template.

    Args:
        system: system message (None: the template's default).
        fastchat_template: name of a FastChat conversation template (``fastchat.conversation``);
            None renders with the tokenizer's chat template.
    """

    def __init__(self, system: str | None = None, fastchat_template: str | None = None):
        self.system = system
        self.messages: list[dict] = []
        self.fastchat_template = fastchat_template
        if fastchat_template is not None:
            from fastchat.conversation import conv_templates

            if fastchat_template not in conv_templates:
                close = difflib.get_close_matches(fastchat_template, conv_templates, n=3, cutoff=0.5)
                raise ValueError(f"Unknown conversation template {fastchat_template!r}"
                                 + (f" (did you mean {', '.join(close)}?)" if close else "")
                                 + "; the names are the keys of fastchat.conversation.conv_templates.")

    def _fastchat(self):
        from fastchat.conversation import get_conv_template

        conv = get_conv_template(self.fastchat_template)
        if self.system is not None:
            conv.set_system_message(self.system)
        for message in self.messages:
            conv.append_message(conv.roles[message["role"] == ASSISTANT], message["content"])
        return conv

    @property
    def roles(self) -> tuple[str, str]:
        """Display names of the user and the assistant."""
        return tuple(self._fastchat().roles) if self.fastchat_template else (USER, ASSISTANT)

    @property
    def stop_strings(self) -> list[str]:
        """Strings that end a reply under the FastChat template (none for chat templates)."""
        if not self.fastchat_template:
            return []
        stop = self._fastchat().stop_str
        return [stop] if isinstance(stop, str) else list(stop or [])

    @property
    def stop_token_ids(self) -> list[int]:
        return list(self._fastchat().stop_token_ids or []) if self.fastchat_template else []

    def add(self, role: str, content: str) -> None:
        self.messages.append({"role": role, "content": content})

    def input_ids(self, tokenizer) -> torch.Tensor:
        """Prompt ``[1, S]`` for the assistant's next reply."""
        if self.fastchat_template:
            conv = self._fastchat()
            conv.append_message(conv.roles[1], None)
            return tokenizer(conv.get_prompt(), return_tensors="pt")["input_ids"]
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        return tokenizer.apply_chat_template(system + self.messages, add_generation_prompt=True, return_tensors="pt",
                                             return_dict=True)["input_ids"]

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({"system": self.system, "messages": self.messages}, f, indent=2, ensure_ascii=False)

    def load(self, path: str) -> None:
        """Replace the history with the one saved in ``path``; ValueError if it is not such a file."""
        with open(path) as f:
            data = json.load(f)
        messages = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in (USER, ASSISTANT) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise ValueError(f"{path} is not a saved conversation (expected {{\"messages\": [{{\"role\", \"content\"}}]}}).")
        self.system = data.get("system", self.system)
        self.messages = messages
