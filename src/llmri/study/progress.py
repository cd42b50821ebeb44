"""A study's progress bar: prompts done of the total, tokens/s and the ETA (tqdm)."""

from __future__ import annotations

import time
from typing import Any

from .prompts import PromptRow


class StudyBar:
    """Prompts done of ``total``, tokens/s and the ETA, as a tqdm bar (or one line per update)."""

    def __init__(self, total: int | None, *, file: Any = None, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.t0 = time.perf_counter()
        self.tokens = 0
        self.bar = tqdm(total=total, desc="study", unit="prompt", file=file, disable=not enabled, dynamic_ncols=True)

    def update(self, row: PromptRow, session_id: str, tokens: int) -> None:
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{rate:.1f} tok/s", refresh=False)
        self.bar.update(1)

    def skip(self, row: PromptRow) -> None:
        """A prompt complete already (a resumed study): done, at no cost, so it moves no rate."""
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def study_bar(progress: bool | None, total: int | None) -> StudyBar | None:
    from ..capture.progressbar import wanted

    if not wanted(progress):
        return None
    return StudyBar(total)
