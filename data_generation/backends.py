"""Chat back ends for self-distillation: local ``transformers`` generation and OpenAI-compatible servers.

Both answer a batch of conversations (message lists ending in a user turn) and return, per
conversation, the reply text and its number of generated tokens.
"""

import asyncio

import torch


class LocalBackend:
    """Batched ``model.generate`` on a local Hugging Face model (CPU or GPU)."""

    def __init__(self, model_path: str, temperature: float, max_new_tokens: int, device: str | None = None,
                 dtype: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.unk_token or self.tokenizer.eos_token
        if self.tokenizer.chat_template is None:
            raise SystemExit(f"{model_path}: the tokenizer has no chat template; use a chat model.")
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        self.temperature, self.max_new_tokens = temperature, max_new_tokens

    @torch.inference_mode()
    def answer(self, conversations: list[list[dict]]) -> list[tuple[str, int]]:
        texts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                 for c in conversations]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampling = {"do_sample": True, "temperature": self.temperature, "top_p": 1.0, "top_k": 0} \
            if self.temperature > 0 else {"do_sample": False}
        out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=self.tokenizer.eos_token_id, **sampling)
        new = out[:, enc["input_ids"].shape[1]:]
        replies = []
        for row in new.tolist():
            n = row.index(self.tokenizer.eos_token_id) + 1 if self.tokenizer.eos_token_id in row else len(row)
            replies.append((self.tokenizer.decode(row[:n], skip_special_tokens=True), n))
        return replies


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
