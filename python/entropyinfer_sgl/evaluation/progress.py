"""A progress bar for long CLI work (`entropyinfer eval`, `entropyinfer profile`): tqdm when it is installed (the
`eval` extra brings it), else one stderr line per update. Always on stderr, so stdout keeps only the results."""

from __future__ import annotations

import sys


class Progress:
    """`update(count, note)` after each step of `total`; `write(line)` prints without breaking the bar."""

    def __init__(self, total: int, enabled: bool = True, *, unit: str = "run", description: str | None = None):
        self.total, self.done, self.enabled, self.description, self._bar = total, 0, enabled, description, None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit=unit, desc=description, dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass

    def update(self, count: int, note: str) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(count)
        elif self.enabled:
            prefix = f"{self.description}: " if self.description else ""
            print(f"{prefix}[{self.done}/{self.total}] {note}", file=sys.stderr, flush=True)

    def write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
