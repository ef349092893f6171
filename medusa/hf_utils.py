"""Publish a folder of Medusa heads on the Hugging Face Hub, with a model card.

    python -m medusa.hf_utils --folder DIR --repo NAME [--private] [--revision BRANCH]
                              [--commit-message MSG] [--endpoint URL] [--token TOKEN] [--replace-readme]

Steps: the repository id and the folder are validated first (``config.json`` and heads that load, read
as :mod:`medusa.export` reads them; an invalid folder or id is refused before anything is created on the
Hub or written), then the repository is created (``exist_ok``), the branch too when ``--revision`` names
one, ``README.md`` (the model card) is written into the folder unless it has one already (``--replace-readme``
overwrites it), and every file of the folder goes up in one commit.
The endpoint is ``--endpoint``, else ``HF_ENDPOINT``, else huggingface.co.

The card is built from the heads' config and two optional files of the folder:

``training_summary.json`` (written by the training scripts; every key is optional, read defensively):
    per-head accuracy as ``per_head: [{"top1": .., "top5": ..}, ...]`` or as lists ``head_top1`` /
    ``head_top5`` (also ``eval_top1`` / ``eval_top5``), fractions in [0, 1]; the training data as
    ``data`` / ``dataset`` / ``data_path``; any other top-level number or string is listed as is.

``benchmark.json`` (written by the benchmarks; every key is optional):
    ``tokens_per_step`` (mean tokens emitted per base forward), ``speedup`` (Medusa tokens/s over plain
    greedy tokens/s), ``medusa_tokens_per_second``, ``baseline_tokens_per_second``, ``dataset`` (e.g.
    "MT-bench"), ``num_questions``, ``hardware``, ``dtype``, ``tree`` (the ``medusa_choices`` preset),
    ``temperature``.
"""

import argparse
import json
import os
import re
import sys

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from .export import VLLM_VERSIONS, HeadsCheckpoint, load_heads_checkpoint
from .model.checkpoint import CheckpointError

README = "README.md"
TRAINING_SUMMARY = "training_summary.json"
BENCHMARK = "benchmark.json"
BENCHMARK_FIELDS = {
    "tokens_per_step": "Tokens per step (per base forward)",
    "speedup": "Speedup over plain greedy decoding",
    "medusa_tokens_per_second": "Medusa tokens/s",
    "baseline_tokens_per_second": "Baseline tokens/s",
    "dataset": "Prompts",
    "num_questions": "Questions",
    "hardware": "Hardware",
    "dtype": "dtype",
    "tree": "Tree (medusa_choices)",
    "temperature": "Temperature",
}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class PublishError(RuntimeError):
    """The folder cannot be published; the message says why."""


def _read_json(path: str) -> dict:
    """A JSON object from ``path``, or {} when the file is absent, unreadable or not an object."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _fraction(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _per_head_accuracy(summary: dict) -> list[tuple[str, str]]:
    """[(top1, top5)] per head, formatted, from any of the documented shapes; [] when absent."""
    per_head = summary.get("per_head")
    if isinstance(per_head, list) and all(isinstance(h, dict) for h in per_head):
        return [(_fraction(h.get("top1")), _fraction(h.get("top5"))) for h in per_head]
    for top1_key, top5_key in (("head_top1", "head_top5"), ("eval_top1", "eval_top5")):
        top1, top5 = summary.get(top1_key), summary.get(top5_key)
        if isinstance(top1, list):
            top5 = top5 if isinstance(top5, list) and len(top5) == len(top1) else [None] * len(top1)
            return [(_fraction(a), _fraction(b)) for a, b in zip(top1, top5)]
    return []


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def model_card(folder: str, heads: HeadsCheckpoint, repo_id: str) -> str:
    """The ``README.md`` text: YAML front matter, heads, training data, measured speed, how to run."""
    config = heads.config
    base = config.base_model_name_or_path or "(not recorded)"
    on_hub = bool(_HUB_ID.match(base)) and not os.path.exists(base)
    # The Hub accepts only a Hub model id as base_model; a local path stays out of the metadata.
    front = ["---", *([f"base_model: {base}"] if on_hub else []), "library_name: medusa-llm",
             "tags:", "- medusa", "- speculative-decoding", "---"]
    head_type = "shared lm_head (\"version 2\": logits from the base lm_head)" if config.shared_lm_head \
        else "own lm_head per head"
    sections = [
        "\n".join(front),
        f"# {repo_id.split('/')[-1]}\n\nMedusa heads (Cai et al., [arXiv 2401.10774](https://arxiv.org/abs/2401.10774)) "
        f"for `{base}`: extra decoding heads that propose several tokens per step, verified in one forward pass "
        "with tree attention, so the base model generates faster at batch size 1.",
        "## Heads\n\n" + _table(("", ""), [
            ("Base model", f"`{base}`"),
            ("Heads", config.medusa_num_heads),
            ("ResBlock layers per head", config.medusa_num_layers),
            ("Head type", head_type),
            ("Hidden size", config.hidden_size),
        ]),
    ]
    summary = _read_json(os.path.join(folder, TRAINING_SUMMARY))
    if summary:
        training = "## Training\n\n"
        data = next((summary[k] for k in ("data", "dataset", "data_path") if isinstance(summary.get(k), str)), None)
        training += f"Training data: {data}.\n\n" if data else ""
        details = [(k, v) for k, v in summary.items() if k not in ("data", "dataset", "data_path")
                   and isinstance(v, (int, float, str)) and not isinstance(v, bool)]
        if details:
            training += _table(("setting", "value"), details) + "\n\n"
        accuracy = _per_head_accuracy(summary)
        if accuracy:
            training += "Per-head accuracy on held-out data (head k predicts the token k+2 ahead):\n\n"
            training += _table(("head", "top-1", "top-5"), [(k, a, b) for k, (a, b) in enumerate(accuracy)])
        sections.append(training.rstrip())
    benchmark = _read_json(os.path.join(folder, BENCHMARK))
    measured = [(label, benchmark[key]) for key, label in BENCHMARK_FIELDS.items() if key in benchmark]
    if measured:
        sections.append("## Measured speed\n\n" + _table(("", ""), measured))
    base_dir = f'snapshot_download("{base}")' if on_hub else repr(base)
    # Copying a shared lm_head into the export reads it from a local base directory (vLLM: always; TGI: with
    # more than one layer per head), which then is the base the TGI export names: the container must see it.
    copies_lm_head = config.shared_lm_head and config.medusa_num_layers > 1
    vllm_base = " --base-model BASE_DIR" if config.shared_lm_head else ""
    tgi_base, tgi_mount = (" --base-model BASE_DIR", " -v BASE_DIR:BASE_DIR") if copies_lm_head else ("", "")
    # TGI's router falls back to base_model_name_or_path for the tokenizer only when config.json has no
    # model_type, and ours says medusa_heads: TGI gets the export, which has none.
    tgi = ("export to TGI's layout first (medusa-llm's `config.json` carries a `model_type`, with which TGI does not "
           f"find the base model's tokenizer):\n\n```bash\npython -m medusa.export --model medusa-heads --format tgi "
           f"--output medusa-tgi{tgi_base}\ndocker run --gpus all -p 8080:80 -v $PWD/medusa-tgi:/data/medusa-tgi"
           f"{tgi_mount} ghcr.io/huggingface/text-generation-inference --model-id /data/medusa-tgi\n```")
    sections.append(f"""## How to run

With medusa-llm:

```python
from huggingface_hub import snapshot_download
from medusa.model import MedusaModel

model = MedusaModel.from_pretrained(snapshot_download("{repo_id}"), base_model={base_dir})
tokenizer = model.get_tokenizer()
ids = tokenizer.apply_chat_template([{{"role": "user", "content": "Hi!"}}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)["input_ids"]
for out in model.medusa_generate(ids, max_new_tokens=256):
    print(out["new_text"], end="", flush=True)
```

With vLLM {VLLM_VERSIONS} (later releases removed Medusa; export to its key names first; see `docs/serving.md`
of medusa-llm):

```bash
hf download {repo_id} --local-dir medusa-heads
python -m medusa.export --model medusa-heads --format vllm --output medusa-vllm{vllm_base}
vllm serve {base} --speculative-config '{{"method": "medusa", "model": "medusa-vllm", "num_speculative_tokens": {config.medusa_num_heads}}}'
```

With TGI: {tgi}""")
    return "\n\n".join(sections) + "\n"


def _upload_operations(folder: str) -> list[CommitOperationAdd]:
    """One addition per file of the folder (hidden files and folders skipped), repository-relative paths."""
    operations = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
        for name in sorted(files):
            if not name.startswith("."):
                path = os.path.join(root, name)
                operations.append(CommitOperationAdd(os.path.relpath(path, folder).replace(os.sep, "/"), path))
    return operations


def push_to_hub(folder: str, repo_id: str, private: bool = False, revision: str | None = None,
                commit_message: str | None = None, endpoint: str | None = None, token: str | None = None,
                replace_readme: bool = False) -> str:
    """Validate ``folder`` and ``repo_id``, create the repository, write the model card and upload; returns
    the commit URL.

    The card is written as the folder's ``README.md`` only where there is none, or with ``replace_readme``:
    a README of the user's own goes up as it is.

    Raises:
        PublishError: the folder is not a loadable Medusa checkpoint or the repository id is invalid
            (nothing was created or written), or the Hub refused a request (the message gives the step,
            the status and the Hub's reason).
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PublishError(f"--repo {repo_id!r} is not a valid repository id: {e}") from None
    try:
        heads = load_heads_checkpoint(folder)
    except CheckpointError as e:
        raise PublishError(f"{folder} cannot be published: {e}") from None
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT"), token=token)
    step = "creating the repository"
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision:
            step = f"creating the branch {revision!r}"
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        readme = os.path.join(folder, README)
        if replace_readme or not os.path.exists(readme):
            with open(readme, "w") as f:
                f.write(model_card(folder, heads, repo_id))
        step = "uploading"
        commit = api.create_commit(repo_id, operations=_upload_operations(folder), revision=revision,
                                   commit_message=commit_message or f"Upload Medusa heads ({heads.config.medusa_num_heads} heads)")
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        reason = (e.server_message or str(e)).strip().splitlines()[0]
        raise PublishError(f"{step} {repo_id} on {api.endpoint} failed (HTTP {status}): {reason}") from None
    except Exception as e:  # connection errors come from the HTTP client huggingface_hub uses (httpx or httpx2)
        raise PublishError(f"{step} {repo_id} on {api.endpoint} failed: {type(e).__name__}: {e}") from None
    return commit.commit_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medusa.hf_utils", description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True, help="Medusa heads directory to publish.")
    parser.add_argument("--repo", required=True, help="Repository id, e.g. my-org/medusa-smollm2-135m.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--revision", default=None, help="Branch to upload to (created if missing; default main).")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co).")
    parser.add_argument("--token", default=None, help="Hub token (default: the saved login or HF_TOKEN).")
    parser.add_argument("--replace-readme", action="store_true",
                        help="Write the generated model card over the folder's existing README.md "
                             "(default: an existing README.md is uploaded as it is).")
    args = parser.parse_args(argv)
    kept_readme = not args.replace_readme and os.path.exists(os.path.join(args.folder, README))
    try:
        url = push_to_hub(args.folder, args.repo, args.private, args.revision, args.commit_message, args.endpoint,
                          args.token, args.replace_readme)
    except PublishError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if kept_readme:
        print(f"note: uploaded the folder's own {README} as the model card; --replace-readme writes the generated one.")
    print(f"Uploaded {args.folder} to {args.repo}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
