"""Progress lines that do not break tqdm bars."""

from __future__ import annotations

from tqdm import tqdm


def log(message: str) -> None:
    """Print one line through tqdm so that active progress bars stay intact."""
    tqdm.write(f"[slimkit] {message}")
