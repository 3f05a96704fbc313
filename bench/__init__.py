"""Benchmarks run by ``make bench`` (``python -m bench``).

Each benchmark is a module with ``run(*, quick: bool, data_root: Path) -> dict`` (the figures, JSON-ready)
and ``render(result: dict) -> str`` (a readable table); ``bench.__main__`` only picks, runs and saves them.
"""
