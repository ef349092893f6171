"""Running FastChat's LLM-judge scripts on ``llm_judge/data``, after checking that the judge can be reached.

FastChat's ``gen_judgment`` retries every failed API call 16 times, 10 s apart, and then records
``$ERROR$`` as the judgment; :func:`check_judge_api` fails in one line before the run instead.
"""

import importlib.metadata
import importlib.util
import os
import runpy
import sys

import httpx

LLM_JUDGE_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "llm_judge"))


class JudgeError(RuntimeError):
    """The judge cannot run (no key, unreachable endpoint, missing client packages)."""


def _endpoint(judge_model: str) -> tuple[str, str, dict]:
    """(key variable, API base, headers without the key) of the API that FastChat calls for ``judge_model``."""
    if judge_model.startswith("claude"):
        return "ANTHROPIC_API_KEY", "https://api.anthropic.com/v1", {"anthropic-version": "2023-06-01"}
    # openai<1, which FastChat's judge uses, reads its endpoint from OPENAI_API_BASE.
    return "OPENAI_API_KEY", os.environ.get("OPENAI_API_BASE", "https://api.openai.com/v1").rstrip("/"), {}


def check_judge_api(judge_model: str, timeout: float = 10.0) -> None:
    """Raise :class:`JudgeError` unless the judge's key is set and its API answers one cheap request (list models)."""
    key_variable, base, headers = _endpoint(judge_model)
    key = os.environ.get(key_variable)
    if not key:
        raise JudgeError(f"The judge {judge_model!r} needs {key_variable}: it is not set, so no judge API can be called.")
    if key_variable == "ANTHROPIC_API_KEY":
        headers["x-api-key"] = key
    else:
        headers["Authorization"] = f"Bearer {key}"
    try:
        response = httpx.get(f"{base}/models", headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        raise JudgeError(f"The judge API at {base} is not reachable ({type(e).__name__}: {e}).") from None
    if response.status_code in (401, 403):
        raise JudgeError(f"The judge API at {base} refused the key in {key_variable} (HTTP {response.status_code}).")


def check_packages(*names: str) -> None:
    """Raise :class:`JudgeError` naming the pip requirement for any of FastChat's judge dependencies not installed."""
    requirements = {"openai": "openai<1", "anthropic": "anthropic", "pandas": "pandas"}
    missing = [requirements[n] for n in names if importlib.util.find_spec(n) is None]
    if "openai" in names and "openai<1" not in missing and importlib.metadata.version("openai").split(".")[0] != "0":
        missing.append("openai<1")  # fschat 0.2.36 calls openai.ChatCompletion, removed in openai 1.0
    if missing:
        raise JudgeError(f"FastChat's judge needs {', '.join(missing)}: pip install 'medusa-llm[judge]'")


def asks_for_help(argv: list[str]) -> bool:
    return bool({"-h", "--help"} & set(argv))


def run_fastchat_script(module: str, argv: list[str], packages: tuple[str, ...], path_options: tuple[str, ...],
                        doc: str) -> None:
    """Run FastChat's ``module`` once its ``packages`` are installed (:func:`check_packages`).

    ``--help`` always answers: FastChat's own help, or, where the packages are missing (FastChat imports
    them before parsing its options), ``doc`` and what to install.
    """
    try:
        check_packages(*packages)
    except JudgeError as e:
        if not asks_for_help(argv):
            raise
        print(f"{doc.strip()}\n\nFastChat's own option list shows once its judge packages are installed. {e}")
        return
    run_fastchat(module, absolute_path_options(argv, path_options))


def absolute_path_options(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` with the values of ``options`` (``--opt v`` or ``--opt=v``) made absolute (the run changes directory)."""
    out = list(argv)
    for i, arg in enumerate(out):
        name, eq, value = arg.partition("=")
        if name in options and eq:
            out[i] = f"{name}={os.path.abspath(value)}"
        elif arg in options and i + 1 < len(out):
            out[i + 1] = os.path.abspath(out[i + 1])
    return out


def run_fastchat(module: str, argv: list[str]) -> None:
    """Run FastChat's ``module`` as a script from ``llm_judge/`` (its paths are relative: ``data/<bench>/...``)."""
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    sys.argv = [module, *argv]
    os.chdir(LLM_JUDGE_DIR)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
