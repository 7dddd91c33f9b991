"""The sidemesh benchmark harness (``python bench/run.py``); see bench/README.md."""

__all__: list[str] = []
