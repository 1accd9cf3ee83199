"""Progress lines that do not break tqdm bars."""

from __future__ import annotations


def log(message: str) -> None:
    """Print one line through tqdm so that active progress bars stay intact."""
    from tqdm import tqdm

    tqdm.write(f"[slimkit] {message}")
