"""Building blocks of both training scripts: base model and tokenizer, datasets, DeepSpeed helpers, exit."""

import contextlib
import gc
import importlib.util
import json
import logging
import math
import os
import time

import torch
import transformers

from .data import ConversationDataset, DataError, PadCollator, chat_renderer, load_training_conversations

logger = logging.getLogger(__name__)


def load_base_model(model_args, training_args) -> transformers.PreTrainedModel:
    """The base causal LM: bf16 with ``--bf16``, optionally bitsandbytes-quantised (frozen) on this rank's GPU."""
    if training_args.deepspeed and torch.distributed.is_initialized():
        import deepspeed

        # On CPU, accelerate sets up gloo but not deepspeed.comm; ZeRO-3 partitions at load time and needs it.
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    dtype = torch.bfloat16 if training_args.bf16 else (torch.float16 if training_args.fp16 else torch.float32)
    kwargs = {"dtype": dtype}
    if model_args.load_in_4bit or model_args.load_in_8bit:
        try:
            import bitsandbytes  # noqa: F401  (fail here with a clear message, not deep inside transformers)
        except ImportError as e:
            raise SystemExit("--load_in_4bit/--load_in_8bit need bitsandbytes: pip install 'medusa-llm[quant]'") from e
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=model_args.load_in_4bit, load_in_8bit=model_args.load_in_8bit,
            bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
        kwargs["device_map"] = {"": training_args.device}  # this rank's GPU, or the CPU (bitsandbytes >= 0.50)
    return transformers.AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)


def load_tokenizer(model_args):
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    except OSError as e:
        raise SystemExit(f"Cannot load {model_args.model_name_or_path!r}: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:  # padding positions are masked out, any id will do
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def build_datasets(data_args, tokenizer, model_name_or_path: str, training_args):
    """(train dataset, eval dataset or None, collator) from the data arguments.

    Refuses a file without any target token (it would train nothing and save untrained heads) and warns,
    with counts, when conversations or assistant messages were dropped.
    """
    for path in (data_args.data_path, data_args.eval_data_path):
        if path and not os.path.isfile(path):
            raise SystemExit(f"Data file {path!r} does not exist.")
    render = chat_renderer(tokenizer, model_name_or_path)
    datasets = []
    for path, limit in ((data_args.data_path, data_args.max_train_samples), (data_args.eval_data_path, None)):
        if path is None:
            datasets.append(None)
            continue
        try:
            conversations, summary = load_training_conversations(
                path, tokenizer, render, training_args.model_max_length, limit)
        except DataError as e:
            raise SystemExit(str(e)) from None
        if not conversations:
            raise SystemExit(f"{summary.describe()} No target token is left: refused.")
        if summary.problems() and training_args.should_log:
            logger.warning(summary.describe())
        datasets.append(ConversationDataset(conversations, tokenizer, render, training_args.model_max_length))
    return datasets[0], datasets[1], PadCollator(tokenizer.pad_token_id)


def gathered(params):
    """Under DeepSpeed ZeRO-3, a context in which ``params`` are whole on every rank (collective)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params))


def head_summary(metrics: dict, num_heads: int) -> list[dict]:
    return [{"head": k, "top1": metrics.get(f"eval_medusa{k}_top1"), "top5": metrics.get(f"eval_medusa{k}_top5"),
             "loss": metrics.get(f"eval_medusa{k}_loss")} for k in range(num_heads)]


def train_and_save(trainer, model_args, training_args, train_set, eval_set, extra: dict | None = None,
                   eval_metrics: tuple[str, ...] = ()) -> dict:
    """Trains (resuming if asked), evaluates, saves; returns the summary also written to
    ``training_summary.json``: sizes, steps, wall time, held-out loss and per-head figures, the ``extra``
    fields and the held-out ``eval_<name>`` metric of each of ``eval_metrics``."""
    start = time.time()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    wall = time.time() - start
    metrics = trainer.evaluate() if eval_set is not None else {}
    trainer.save_model(training_args.output_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    summary = {
        "model_name_or_path": model_args.model_name_or_path,
        "train_conversations": len(train_set),
        "eval_conversations": len(eval_set) if eval_set is not None else 0,
        "global_steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "wall_time_s": round(wall, 1),
        "world_size": training_args.world_size,
        "deepspeed_zero_stage": trainer.deepspeed.zero_optimization_stage() if trainer.is_deepspeed_enabled else None,
        "eval_loss": metrics.get("eval_loss", math.nan) if metrics else None,
        **(extra or {}),
        **{f"eval_{name}": metrics.get(f"eval_{name}") for name in eval_metrics},
        "heads": head_summary(metrics, model.config.medusa_num_heads) if metrics else None,
    }
    if training_args.should_save:
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, "training_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def run_script(main) -> None:
    """``main()`` for ``__main__``, then the process group torn down while Python is still fully alive.

    A gloo worker thread drops its reference to a collective's work (and so to that work's tensors) only
    after the caller has returned from the collective. A rank that leaves ``main`` right then (rank 1
    after the last evaluation's all-reduce) finalizes the interpreter while the worker still holds it;
    freeing a tensor that Python let go of takes the GIL, which during finalization (Python < 3.14) ends
    the thread with a forced unwind through C++ that may not throw: ``terminate called without an active
    exception``, SIGABRT, after a successful run. Destroying the group joins its worker threads first.
    The group is freed only with its last reference: the trainer may hold one until collected, and
    DeepSpeed's ``TorchBackend`` binds ``GroupMember.WORLD`` as a default argument when ``deepspeed.comm``
    is first imported, for good if a group exists by then (hence the early import, which transformers
    makes anyway when DeepSpeed is installed). Under ``--deepspeed``, DeepSpeed keeps a group of its own
    (``deepspeed.utils.groups``) whose threads remain.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and importlib.util.find_spec("deepspeed") is not None:
        import deepspeed.comm  # noqa: F401  (under a launcher only: it logs its accelerator choice)
    try:
        main()
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gc.collect()
            torch.distributed.destroy_process_group()
