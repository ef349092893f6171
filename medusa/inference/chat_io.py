"""Terminal front ends of the chat CLI: plain text, rich Markdown, and a programmatic protocol.

Each ChatIO reads a user message, streams a reply from a generator of dicts with ``"text"`` (the
whole reply so far), and prints notes (statistics, errors). ``prompt_for_input`` raises EOFError at
the end of the input. The programmatic protocol is FastChat's: messages end with
``" __END_OF_A_MESSAGE_47582648__\\n"`` and are echoed as ``[!OP:role]: text``.
"""

import io
import sys
from collections.abc import Iterable

COMMANDS = ["!!exit", "!!reset", "!!remove", "!!regen", "!!save", "!!load"]


def _complete_text(text: str) -> str:
    """``text`` without a trailing replacement character (a multi-byte character still being decoded)."""
    return text.rstrip("\ufffd")


class SimpleChatIO:
    """Plain ``input()`` / ``print()``; ``multiline`` reads until end of input (Ctrl-D) on an empty line."""

    def __init__(self, multiline: bool = False):
        self.multiline = multiline
        if isinstance(sys.stdin, io.TextIOWrapper):
            # Bytes that are not UTF-8 (a pasted Latin-1 line) would otherwise raise, or reach the tokenizer as
            # lone surrogates, and end the chat: they become U+FFFD, which Chat.run points out.
            sys.stdin.reconfigure(errors="replace")

    def prompt_for_input(self, role: str) -> str:
        if not self.multiline:
            return self._input(f"{role}: ")
        lines = [self._input(f"{role} [Ctrl-D on an empty line to end]: ")]
        while True:
            try:
                lines.append(self._input())
            except EOFError:
                return "\n".join(lines)

    @staticmethod
    def _input(prompt: str = "") -> str:
        """``input(prompt)``, echoing the line when it comes from a pipe (a terminal echoes it itself), so that
        a transcript shows each message after its prompt."""
        line = input(prompt)
        if not sys.stdin.isatty():
            print(line, flush=True)
        return line

    def prompt_for_output(self, role: str) -> None:
        print(f"{role}: ", end="", flush=True)

    def stream_output(self, stream: Iterable[dict]) -> str:
        shown = ""
        try:
            for out in stream:
                text = _complete_text(out["text"])
                if text.startswith(shown):
                    print(text[len(shown):], end="", flush=True)
                    shown = text
        finally:
            print(flush=True)
        return shown

    def print_output(self, text: str) -> None:
        print(text, flush=True)

    def print_note(self, text: str) -> None:
        print(text, flush=True)


class RichChatIO(SimpleChatIO):
    """prompt_toolkit input (history, command completion; with ``multiline`` Esc-Enter adds a line, Enter
    sends) and the reply rendered as Markdown while it streams."""

    def __init__(self, multiline: bool = False):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.completion import WordCompleter
        from prompt_toolkit.history import InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings
        from rich.console import Console

        super().__init__(multiline)
        bindings = KeyBindings()
        if multiline:
            bindings.add("escape", "enter")(lambda event: event.app.current_buffer.newline())
        self._session = PromptSession(history=InMemoryHistory(), completer=WordCompleter(COMMANDS, sentence=True),
                                      key_bindings=bindings)
        self._console = Console()

    def prompt_for_input(self, role: str) -> str:
        self._console.print(f"[bold]{role}:")
        return self._session.prompt("> ")

    def prompt_for_output(self, role: str) -> None:
        self._console.print(f"[bold]{role}:")

    def stream_output(self, stream: Iterable[dict]) -> str:
        from rich.live import Live
        from rich.markdown import Markdown

        text = ""
        try:
            with Live(console=self._console, refresh_per_second=8) as live:
                for out in stream:
                    text = _complete_text(out["text"])
                    # Markdown joins single newlines; the model means them as line breaks.
                    live.update(Markdown(text.replace("\n", "  \n")))
        finally:
            self._console.print()
        return text

    def print_output(self, text: str) -> None:
        from rich.markdown import Markdown

        self._console.print(Markdown(text.replace("\n", "  \n")))

    def print_note(self, text: str) -> None:
        self._console.print(text, style="dim", markup=False, highlight=False)


class ProgrammaticChatIO(SimpleChatIO):
    """FastChat's protocol for driving the chat from another program; notes go to stderr."""

    END = " __END_OF_A_MESSAGE_47582648__\n"

    def prompt_for_input(self, role: str) -> str:
        contents = ""
        while not contents.endswith(self.END):
            char = sys.stdin.read(1)
            if not char:
                raise EOFError
            contents += char
        contents = contents[: -len(self.END)]
        print(f"[!OP:{role}]: {contents}", flush=True)
        return contents

    def prompt_for_output(self, role: str) -> None:
        print(f"[!OP:{role}]: ", end="", flush=True)

    def print_note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


STYLES = {"simple": SimpleChatIO, "rich": RichChatIO, "programmatic": ProgrammaticChatIO}
