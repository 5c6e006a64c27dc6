"""Errors raised at the workbench's boundaries.

Every public entry point validates its input and raises one of these with a message
that says what was expected and what to do. The CLI prints the message (no stack
trace) and exits with status 2; the app shows it in a notification.
"""

from __future__ import annotations


class WorkbenchError(ValueError):
    """Bad input or state that the user can fix; the message says how."""


class UnknownNameError(WorkbenchError, KeyError):
    """A name (model, site, corpus, architecture, feature ...) that is not known.

    The message lists the valid names so the user can pick one.
    """

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...], hint: str = ""):
        self.kind, self.name, self.valid = kind, name, list(valid)
        shown = ", ".join(self.valid[:40]) + (" ..." if len(self.valid) > 40 else "")
        message = f"unknown {kind} {name!r}; expected one of: {shown}"
        if hint:
            message += f". {hint}"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class CorruptFileError(WorkbenchError):
    """A file on disk that cannot be read as what it claims to be (names the file)."""


def require(condition: bool, message: str) -> None:
    """Raise WorkbenchError(message) unless condition holds (boundary validation)."""
    if not condition:
        raise WorkbenchError(message)
