"""Row scheduling for batched decoding: which prompt each cache row decodes, what each prompt has produced,
and when finished rows are refilled from the queue or dropped from the batch. Host-side bookkeeping only;
the decode loop moves the device state accordingly."""

import torch


def _new_tokens(accepted: list[int], eos: set[int], room: int) -> tuple[list[int], bool]:
    """What a step adds to one prompt's output: its accepted tokens up to the first EOS and at most
    ``room`` of them; and whether the prompt stops there."""
    for j, token in enumerate(accepted):
        if token in eos:
            return accepted[: min(j + 1, room)], True
    return accepted[:room], len(accepted) >= room


def bucket(num_active: int) -> int:
    """Batch size to run ``num_active`` rows at: the next power of two, so few CUDA graphs are captured."""
    return 1 << (num_active - 1).bit_length()


class RowScheduler:
    """Prompts waiting, in cache rows, or finished.

    Args:
        prompts: 1-D token id sequences.
        batch_size: rows decoded at once.
        budget: most new tokens per prompt; max_steps: most steps per prompt; eos: stop tokens.
    """

    def __init__(self, prompts: list[torch.Tensor], batch_size: int, budget: int, max_steps: int, eos: set[int]):
        self.prompts, self.batch_size, self.budget, self.max_steps, self.eos = prompts, batch_size, budget, max_steps, eos
        self.waiting = list(range(len(prompts)))[::-1]  # prompt indices, next one last
        self.outputs: list[list[int]] = [[] for _ in prompts]
        self.steps = [0] * len(prompts)
        self.lengths = [p.shape[0] for p in prompts]  # each prompt's committed cache length
        self.rows: list[int | None] = []  # rows[r]: the prompt in cache row r (None once finished)

    def take(self, count: int) -> list[int]:
        """The next ``count`` waiting prompts (indices), leaving the queue."""
        return [self.waiting.pop() for _ in range(count)]

    def record(self, host: list[list[int]]) -> tuple[list[dict | None], bool]:
        """Book one step: ``host[r]`` = [accept length, *path tokens] of cache row r.

        Returns the report (per prompt: its new tokens, or None) and whether any row finished.
        """
        report: list[dict | None] = [None] * len(self.prompts)
        finished_any = False
        for r, (accepted, *path) in enumerate(host):
            i = self.rows[r]
            if i is None:
                continue
            self.lengths[i] += accepted + 1
            self.steps[i] += 1
            new_ids, stopped = _new_tokens(path[: accepted + 1], self.eos, self.budget - len(self.outputs[i]))
            finished = stopped or self.steps[i] >= self.max_steps
            self.outputs[i] += new_ids
            report[i] = {"new_token_ids": new_ids, "accept_length": accepted, "num_new_tokens": len(self.outputs[i]),
                         "finished": finished}
            if finished:
                self.rows[r] = None
                finished_any = True
        return report, finished_any

    def rows_to_refill(self) -> list[int]:
        """Free rows to give waiting prompts now: none until an eighth of the batch is free (a prefill is an
        eager forward, worth several steps, so one per finished row would cost more than the idle rows)."""
        free = [r for r, i in enumerate(self.rows) if i is None][: len(self.waiting)]
        if free and len(free) >= min(max(1, self.batch_size // 8), len(self.waiting)):
            return free
        return []

    def rows_to_keep(self) -> list[int] | None:
        """With nothing waiting, the rows of a smaller batch (the live rows, padded to a power of two), or None
        when the batch keeps its size."""
        live = [r for r, i in enumerate(self.rows) if i is not None]
        keep = live + [r for r, i in enumerate(self.rows) if i is None][: bucket(len(live)) - len(live)]
        return keep if len(keep) < len(self.rows) and not self.waiting else None

    @property
    def done(self) -> bool:
        return all(i is None for i in self.rows) and not self.waiting

    def active(self) -> list[bool]:
        return [i is not None for i in self.rows]

    def longest(self) -> int:
        """The longest committed cache length of a live row."""
        return max(self.lengths[i] for i in self.rows if i is not None)
