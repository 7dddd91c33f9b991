"""Route regexes with RE2 semantics, as Envoy's ``safe_regex``: matching takes time
linear in the input, whatever the pattern, so no request can stall the event loop
(Python's ``re`` backtracks: ``(a+)+$`` against 27 bytes took seconds).

A pattern RE2 cannot run (back-references, look-arounds) is refused, and so is one whose
compiled program is larger than :data:`MAX_PROGRAM_SIZE`, Envoy's default
``re2.max_program_size.error_level``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_PROGRAM_SIZE", "RegexError", "compile_regex"]

MAX_PROGRAM_SIZE = 100


class RegexError(ValueError):
    """A pattern that cannot be used: not RE2, or too large a program."""


def compile_regex(pattern: str, max_program_size: int = MAX_PROGRAM_SIZE) -> Any:
    """The compiled RE2 pattern (``fullmatch``/``search`` as in ``re``).

    :raises RegexError: with what is wrong and what to do.
    """
    # Imported on the first regex: RE2 adds ~2.8 MiB to a process, and most sidecars
    # match routes by prefix only.
    import re2

    options = re2.Options()
    # Errors are ours to report, with the config path; RE2 would also log them to stderr.
    options.log_errors = False
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(
            f"not a valid RE2 regular expression ({reason}); RE2 has no back-references "
            "or look-arounds"
        ) from None
    size = int(compiled.programsize)
    if size > max_program_size:
        raise RegexError(
            f"RE2 program size {size} is over the limit of {max_program_size} "
            "(Envoy's re2.max_program_size): simplify the expression"
        )
    return compiled
