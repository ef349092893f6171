"""Chat back ends for self-distillation: local ``transformers`` generation and OpenAI-compatible servers.

Both answer conversations (message lists ending in a user turn) with the reply text and report the
tokens they generate: the local one a batch at a time, each reply as soon as it finishes, tokens as
they are decoded; the server one a conversation per request, with its reply's token count.
"""

import asyncio
from collections.abc import Callable, Iterator

import torch


class LocalBackend:
    """The library's own batched decoding (static KV cache, CUDA graphs on GPU) on a local HF model.

    Greedy at temperature 0, else plain ancestral sampling: a :class:`~medusa.model.MedusaModel` with
    no speculation (``medusa_choices="none"``), so every row is exactly the base model's own output.
    ``batch_size`` rows decode at once; a finished row takes the next waiting conversation. Grouped
    query heads are folded (``fold_gqa``): large batches are where that pays.
    """

    def __init__(self, model_path: str, temperature: float, max_new_tokens: int, device: str | None = None,
                 dtype: str = "auto", seed: int = 0, batch_size: int = 16):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from medusa.model import MedusaConfig, MedusaModel

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.chat_template is None:
            raise SystemExit(f"{model_path}: the tokenizer has no chat template; use a chat model.")
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(self.device).eval()
        # Plain decoding needs no heads; one shared-lm_head head adds no copy of the (vocab-sized) lm_head.
        self.model = MedusaModel(base, MedusaConfig(medusa_num_heads=1, head_type="shared_lm_head"))
        self.context = self.model.context_length or 2**31
        self.temperature, self.max_new_tokens, self.batch_size = temperature, max_new_tokens, batch_size
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def answers(self, conversations: list[list[dict]],
                on_tokens: Callable[[int], None] | None = None) -> Iterator[tuple[int, str]]:
        """``(index, reply)`` for each conversation, in the order the replies finish; ``on_tokens(n)`` after
        every decoding step, with the tokens it added over all rows."""
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=True)["input_ids"]
                   for c in conversations]
        longest = max(len(p) for p in prompts)
        room = self.context - longest - 1  # one slot for the root token of the last step
        if room < 1:
            raise RuntimeError(f"A conversation of {longest} tokens leaves no room in the model's context of "
                               f"{self.context} tokens.")
        outputs = [[] for _ in prompts]
        limit = min(self.max_new_tokens, room)
        # Every plain step emits one token: a step limit of ``limit`` never binds first (the default, 512, would).
        for rows in self.model.medusa_generate(prompts, temperature=self.temperature, max_new_tokens=limit,
                                               max_steps=limit, medusa_choices="none", generator=self.generator,
                                               batch_size=self.batch_size, fold_gqa=True):
            if on_tokens:
                on_tokens(sum(len(row["new_token_ids"]) for row in rows if row is not None))
            for i, row in enumerate(rows):
                if row is not None:
                    outputs[i] += row["new_token_ids"]
                    if row["finished"]:
                        yield i, self.tokenizer.decode(outputs[i], skip_special_tokens=True)


class OpenAIBackend:
    """``POST {url}/v1/chat/completions`` (vLLM, TGI, ...) with at most ``concurrency`` requests in flight."""

    def __init__(self, url: str, model: str, temperature: float, max_new_tokens: int, concurrency: int,
                 api_key: str | None = None, timeout: float = 600.0):
        import httpx

        self.endpoint = url.rstrip("/") + ("" if url.rstrip("/").endswith("/v1") else "/v1") + "/chat/completions"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(headers=headers, timeout=timeout)
        self.model, self.temperature, self.max_new_tokens = model, temperature, max_new_tokens
        self.semaphore = asyncio.Semaphore(concurrency)

    async def answer_one(self, messages: list[dict]) -> tuple[str, int]:
        payload = {"model": self.model, "messages": messages, "temperature": self.temperature,
                   "max_tokens": self.max_new_tokens}
        import httpx

        async with self.semaphore:
            try:
                response = await self.client.post(self.endpoint, json=payload)
            except httpx.HTTPError as e:
                raise RuntimeError(f"{self.endpoint}: {e!r}") from e
        if response.status_code != 200:
            raise RuntimeError(f"{self.endpoint} answered {response.status_code}: {response.text[:200]}")
        body = response.json()
        return body["choices"][0]["message"]["content"], body.get("usage", {}).get("completion_tokens", 0)

    async def aclose(self) -> None:
        await self.client.aclose()
