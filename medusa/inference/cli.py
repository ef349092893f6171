"""Chat with a Medusa model in the terminal: ``python -m medusa.inference.cli [--model DIR | --demo VARIANT]``.

Without ``--model`` it chats with the demo model: SmolLM2-135M-Instruct and a checkpoint shipped with the
package, the Medusa-1 heads (``--demo medusa1``, the default) or the Medusa-2 checkpoint (``--demo medusa2``). Replies stream as they are decoded; after each one a line gives tokens/s and the mean
number of tokens per Medusa step. Ctrl-C stops the current reply; Ctrl-D (end of input) or ``!!exit``
quits.

Commands: ``!!exit``, ``!!reset`` (new conversation), ``!!remove`` (drop the last exchange),
``!!regen`` (answer the last message again), ``!!save <file>``, ``!!load <file>`` (JSON history).
"""

import argparse
import itertools
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from importlib.util import find_spec

import torch
import transformers

from .. import demo
from ..model import CheckpointError, MedusaModel, presets
from ..model.medusa_model import default_dtype
from ..model.candidates import COPY_DEPTH
from ..model.compiled_layers import import_compiler
from ..model.eos import eos_token_ids
from ..model.generate import check_copy_shape, resolve_step
from ..model.posterior import POSTERIOR_ALPHA, POSTERIOR_THRESHOLD
from ..model.sampling import resolve_sampling
from .chat_io import STYLES
from .conversation import ASSISTANT, USER, Conversation


class CliError(Exception):
    """Bad input the CLI reports as one line."""


COMPILE_STEP = {"background": "background", "now": True, "off": False}  # --compile-step -> medusa_generate's


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m medusa.inference.cli",
                                description="Chat with a Medusa model (default: the demo model, SmolLM2-135M-Instruct).",
                                epilog="Commands in the chat: !!exit, !!reset, !!remove, !!regen, !!save <file>, "
                                       "!!load <file>. Ctrl-C stops the reply; Ctrl-D quits.")
    p.add_argument("--model", help="Medusa checkpoint directory (any supported layout); default: the demo model")
    p.add_argument("--demo", choices=demo.DEMO_VARIANTS, help=f"which demo checkpoint, without --model: medusa1 "
                   f"(heads on the frozen base) or medusa2 (heads and backbone fine-tuned together); default: "
                   f"{demo.DEFAULT_VARIANT}")
    p.add_argument("--base-model", help="base model directory, overriding the one the heads' config names")
    quant = p.add_mutually_exclusive_group()
    quant.add_argument("--load-in-8bit", action="store_true", help="quantise the base model to 8 bits (bitsandbytes)")
    quant.add_argument("--load-in-4bit", action="store_true", help="quantise the base model to 4 bits (bitsandbytes)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto (default): cuda if available")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                   help="auto (default): float32 on cpu, the checkpoint's dtype on cuda")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy, exactly the base model's output")
    p.add_argument("--max-steps", type=int, default=512, help="most Medusa steps per reply (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, help="most new tokens per reply (default: what the steps allow)")
    p.add_argument("--medusa-choices", help=f"tree: a preset ({', '.join(sorted(presets()))}), a JSON list of paths "
                                            "or a JSON file (default: the tree shipped with the heads for the device, else their tree policy, "
                                            "else mc_sim_7b_63 cut to the number of heads)")
    p.add_argument("--copy-chains", type=int, help="copy branches (prompt lookup) beside the head paths (default: the "
                                                  "library's, 2; 0: heads only)")
    p.add_argument("--copy-depth", type=int, help="tokens per copy branch (default: the library's, 10)")
    p.add_argument("--adaptive", choices=["on", "off"], help="trees that follow acceptance (default: on for greedy "
                                                             "decoding on a CPU, else off)")
    p.add_argument("--compile-step", choices=list(COMPILE_STEP),
                   help="run each decode step through torch.compile: the base model's layers and the step's own "
                        "work (greedy and typical sampling only; fewer, fused kernels per step). now: a reply waits "
                        "while a new tree or cache span compiles (seconds; the first launch also fills PyTorch's on-disk "
                        "cache). background: replies start at once with the uncompiled step while a worker thread "
                        "compiles, and stream slower meanwhile. In bfloat16 or float16 the compiled step rounds "
                        "differently, so a reply can differ. off: never compiled. Default: now for greedy decoding on "
                        "a GPU, else off (benchmarks/RESULTS.md)")
    p.add_argument("--sampling", choices=["lossless", "typical"], help="for temperature > 0: lossless (default; exactly "
                   "the base model's distribution) or typical (lossy, accepts more)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens only (default: 0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: %(default)s)")
    p.add_argument("--seed", type=int, help="seed the sampling for reproducible replies")
    p.add_argument("--posterior-threshold", type=float, help=f"typical acceptance epsilon (default: {POSTERIOR_THRESHOLD})")
    p.add_argument("--posterior-alpha", type=float, help=f"typical acceptance alpha (default: {POSTERIOR_ALPHA})")
    p.add_argument("--conv-template", help="FastChat conversation template (e.g. vicuna_v1.1) instead of the "
                                           "tokenizer's chat template; needed for models without one")
    p.add_argument("--conv-system-msg", help="system message of the conversation")
    p.add_argument("--style", choices=sorted(STYLES), default="simple", help="terminal front end (default: %(default)s)")
    p.add_argument("--multiline", action="store_true", help="multi-line input (simple: Ctrl-D on an empty line ends "
                                                            "it; rich: Esc-Enter adds a line)")
    p.add_argument("--no-history", action="store_true", help="answer every message on its own, without the chat so far")
    p.add_argument("--debug", action="store_true", help="also show the prompt length and each step's accept length")
    args = p.parse_args(argv)
    if args.demo is not None and args.model is not None:
        p.error("--demo picks a shipped checkpoint and --model names another: give one of them")
    try:
        sampling = resolve_sampling(args.sampling, args.temperature, args.top_k, args.top_p)
    except ValueError as e:
        p.error(str(e))
    if sampling != "typical" and (args.posterior_threshold is not None or args.posterior_alpha is not None):
        p.error(f"--posterior-threshold and --posterior-alpha apply to --sampling typical only, not to {sampling} "
                "decoding")
    if COMPILE_STEP.get(args.compile_step) and sampling == "lossless":
        p.error(f"--compile-step {args.compile_step} needs greedy decoding or --sampling typical (lossless sampling walks "
                "the tree on the host)")
    if args.max_steps < 1 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        p.error("--max-steps and --max-new-tokens must be >= 1")
    try:
        check_copy_shape(args.copy_chains, COPY_DEPTH if args.copy_depth is None else args.copy_depth)
    except ValueError as e:
        p.error(str(e).replace("copy_", "--copy-"))
    return args


def hf_kwargs(args) -> dict:
    """``from_pretrained`` arguments for the base model: device, dtype and bitsandbytes quantisation."""
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA device is available.")
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else default_dtype(device)
    kwargs = {"dtype": dtype, "device_map": device}
    if args.load_in_8bit or args.load_in_4bit:
        flag = "--load-in-8bit" if args.load_in_8bit else "--load-in-4bit"
        if find_spec("bitsandbytes") is None:
            raise CliError(f"{flag} needs bitsandbytes: pip install 'medusa-llm[quant]'.")
        from transformers import BitsAndBytesConfig

        # On CPUs with AVX512-BF16, bitsandbytes' CPU backend tries at import to fetch a faster 4-bit kernel
        # from the Hub (package `kernels`) and logs "Failed to load CPU gemm_4bit_forward" when it cannot; it
        # then uses its own kernel, with the same results. Like the other library warnings, not for the chat.
        logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=args.load_in_8bit, load_in_4bit=args.load_in_4bit)
    return kwargs


def load_model(args) -> MedusaModel:
    """The Medusa model asked for, with ``model.tokenizer`` set; CliError on a bad path or checkpoint."""
    for flag, path in (("--model", args.model), ("--base-model", args.base_model)):
        if path is not None and not os.path.isdir(path):
            raise CliError(f"{flag} {path}: no such directory.")
    kwargs = hf_kwargs(args)
    variant = args.demo or demo.DEFAULT_VARIANT
    if args.model is None and args.base_model is None:
        return demo.load_demo(variant, **kwargs)
    path = args.model or demo.demo_dir(variant)
    model = MedusaModel.from_pretrained(path, base_model=args.base_model or demo.base_model_for(path), **kwargs)
    model.get_tokenizer()
    return model


@dataclass
class ReplyStats:
    """Tokens, Medusa steps and wall time of one reply."""

    text: str = ""
    tokens: int = 0
    accept_lengths: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def line(self, debug: bool) -> str:
        steps = len(self.accept_lengths)
        text = (f"[{self.tokens} tokens in {self.seconds:.2f} s: {self.tokens / max(self.seconds, 1e-9):.1f} tokens/s, "
                f"{self.tokens / max(steps, 1):.2f} tokens/step over {steps} steps]")
        if debug:
            text += f"\n[accept lengths per step: {self.accept_lengths}]"
        return text


def _tracked(stream, stats: ReplyStats, stop_strings: list[str]):
    """Pass the generator's dicts on, recording statistics and cutting the reply at a stop string."""
    start = time.perf_counter()
    try:
        for out in stream:
            stats.text = out["text"]
            stats.tokens = out["num_new_tokens"]
            stats.accept_lengths.append(out["accept_length"])
            stats.seconds = time.perf_counter() - start
            cut = min((i for i in (out["text"].find(s) for s in stop_strings) if i >= 0), default=-1)
            if cut >= 0:
                stats.text = out["text"][:cut]
                yield {**out, "text": stats.text}
                return
            yield out
    finally:
        stats.seconds = time.perf_counter() - start


def conversation_template(model: MedusaModel, name: str | None) -> str | None:
    """The FastChat template to use: ``name``, else None (the tokenizer's chat template) when the tokenizer
    has one, else FastChat's guess from the base model's path (e.g. vicuna_v1.1 for a Vicuna)."""
    if name is not None or model.tokenizer.chat_template is not None:
        return name
    from fastchat.model.model_adapter import get_conversation_template  # slow import: only needed here

    return get_conversation_template(model.base_model.name_or_path).name


class Chat:
    """The chat loop: reads messages and commands, streams replies, keeps the history."""

    def __init__(self, model: MedusaModel, args, chatio):
        self.model, self.args, self.io = model, args, chatio
        self.conv = Conversation(args.conv_system_msg, conversation_template(model, args.conv_template))
        eos = eos_token_ids(model.base_model, tokenizer=model.tokenizer)
        self.eos = eos + [t for t in self.conv.stop_token_ids if t not in eos]
        self.gen_kwargs = dict(temperature=args.temperature, sampling=args.sampling, top_k=args.top_k, top_p=args.top_p,
                               max_steps=args.max_steps,
                               max_new_tokens=args.max_new_tokens, medusa_choices=args.medusa_choices,
                               eos_token_id=self.eos)
        self.gen_kwargs.update({name: getattr(args, name) for name in ("posterior_threshold", "posterior_alpha",
                                                                       "copy_chains", "copy_depth")
                                if getattr(args, name) is not None})  # unset: the library's defaults
        if args.adaptive is not None:
            self.gen_kwargs["adaptive"] = args.adaptive == "on"
        if args.compile_step is not None:
            self.gen_kwargs["compile_step"] = COMPILE_STEP[args.compile_step]
        sampling = resolve_sampling(args.sampling, args.temperature, args.top_k, args.top_p)
        if resolve_step(model.lm_head.weight.device.type, sampling, compile_step=self.gen_kwargs.get("compile_step"))[1]:
            import_compiler()  # before the first prompt, which would otherwise wait for it
        if args.seed is not None:
            self.gen_kwargs["generator"] = torch.Generator(model.lm_head.weight.device).manual_seed(args.seed)

    def reply(self) -> None:
        """Generate the assistant's answer to the history, streaming it; appends it to the history.

        A prompt that does not fit the context is reported and its message dropped.
        """
        input_ids = self.conv.input_ids(self.model.tokenizer)
        stats = ReplyStats()
        tracked = _tracked(self.model.medusa_generate(input_ids, **self.gen_kwargs), stats, self.conv.stop_strings)
        interrupted = False
        try:
            try:
                first = next(tracked, None)  # the prefill and the context check happen here
            except ValueError as e:
                self.io.print_note(f"error: {e}")
                self.conv.messages.pop()
                return
            self.io.prompt_for_output(self.conv.roles[1])
            self.io.stream_output(itertools.chain([first] if first else [], tracked))
        except KeyboardInterrupt:
            interrupted = True
        self.conv.add(ASSISTANT, stats.text.strip())
        if interrupted:
            self.io.print_note("[reply interrupted]")
        if self.args.debug:
            self.io.print_note(f"[prompt: {input_ids.shape[1]} tokens]")
        self.io.print_note(stats.line(self.args.debug))

    def command(self, inp: str) -> bool:
        """Run a ``!!`` command; False to quit."""
        name, _, arg = inp.partition(" ")
        arg = arg.strip()
        if name == "!!exit":
            return False
        if name == "!!reset":
            self.conv.messages.clear()
            self.io.print_note("[new conversation]")
        elif name == "!!remove":
            self._drop_last_exchange()
        elif name == "!!regen":
            if not self.conv.messages:
                self.io.print_note("[nothing to regenerate]")
            else:
                if self.conv.messages[-1]["role"] == ASSISTANT:
                    self.conv.messages.pop()
                self.reply()
        elif name in ("!!save", "!!load"):
            if not arg:
                self.io.print_note(f"usage: {name} <file>")
                return True
            try:
                self.conv.save(arg) if name == "!!save" else self.conv.load(arg)
            except (OSError, ValueError) as e:
                self.io.print_note(f"error: {e}")
                return True
            self.io.print_note(f"[{'saved to' if name == '!!save' else 'loaded'} {arg}]")
            if name == "!!load":
                roles = self.conv.roles
                for message in self.conv.messages:
                    self.io.prompt_for_output(roles[message["role"] == ASSISTANT])
                    self.io.print_output(message["content"])
        else:
            self.io.print_note(f"unknown command {name}; commands: !!exit !!reset !!remove !!regen !!save !!load")
        return True

    def _drop_last_exchange(self) -> None:
        if not self.conv.messages:
            self.io.print_note("[nothing to remove]")
            return
        if self.conv.messages[-1]["role"] == ASSISTANT:
            self.conv.messages.pop()
        if self.conv.messages and self.conv.messages[-1]["role"] == USER:
            self.conv.messages.pop()
        self.io.print_note("[removed the last message]")

    def run(self) -> None:
        while True:
            try:
                inp = self.io.prompt_for_input(self.conv.roles[0])
            except EOFError:
                self.io.print_note("")
                return
            except KeyboardInterrupt:  # Ctrl-C at the prompt discards the line
                self.io.print_note("")
                continue
            if inp.startswith("!!"):
                if not self.command(inp.strip()):
                    return
                continue
            if not inp.strip():
                continue
            if "\ufffd" in inp:
                self.io.print_note("[bytes of the message that are not UTF-8 were replaced by \ufffd]")
            if self.args.no_history:
                self.conv.messages.clear()
            self.conv.add(USER, inp)
            self.reply()


def main(argv=None) -> int:
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()  # the chat is the output; library warnings would interleave with it
    transformers.logging.disable_progress_bar()
    try:
        chatio = STYLES[args.style](args.multiline)
        model = load_model(args)
        model.tree_buffers(args.medusa_choices)  # reject a tree that does not fit the heads before chatting
        chat = Chat(model, args, chatio)
    except (CliError, CheckpointError, demo.DemoError, ValueError, OSError, ImportError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    if args.debug:
        template = chat.conv.fastchat_template or "the tokenizer's chat template"
        chatio.print_note(f"[{model.config.medusa_num_heads} Medusa heads on {model.base_model.config.model_type}, "
                          f"{model.tree_buffers(args.medusa_choices).num_nodes} tree nodes, "
                          f"{model.lm_head.weight.device}, {model.lm_head.weight.dtype}; conversation: {template}]")
    chat.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
