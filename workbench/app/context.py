"""What every page shares: the loaded model (one per server process) and error display.

The model is loaded once per process and cached in `pn.state.cache`, so all sessions
share it; its lock serialises engine calls from concurrent sessions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import panel as pn

from workbench.errors import WorkbenchError

log = logging.getLogger("workbench.app")


def app_model_name() -> str:
    from workbench.engine.registry import DEFAULT_MODEL

    return os.environ.get("WORKBENCH_APP_MODEL", DEFAULT_MODEL)


def shared_model(name: str | None = None):
    """The process-wide model instance (loaded on first use, then cached)."""
    from workbench.engine.registry import load_model

    name = name or app_model_name()
    return pn.state.as_cached(f"workbench-model:{name}", load_model, name_or_path=name, device="cpu")


@dataclass
class AppContext:
    """Handed to every page builder."""

    model: Any
    notify: Callable[[str], None]


def user_message(error: BaseException) -> str:
    """The text shown to a user for an error: the message for bad input, a short note otherwise.

    The app never shows a stack trace; unexpected errors are logged with one.
    """
    if isinstance(error, WorkbenchError):
        return str(error)
    log.error("unexpected error in the app:\n%s", "".join(traceback.format_exception(error)))
    return f"Something went wrong ({type(error).__name__}); the details are in the server log."


async def run_off_ui_thread(function: Callable, *args, **kwargs):
    """Run a blocking engine call in a worker thread so the page stays responsive."""
    return await asyncio.to_thread(function, *args, **kwargs)


def on_load_task(make_coroutine: Callable[[], Awaitable[Any]], wait_s: float = 10.0) -> None:
    """Run `make_coroutine()` on the event loop once Panel has marked the session loaded.

    The app serves with a thread pool (`--num-threads`), so Panel runs its onload step in a
    worker thread: it schedules an async callback on the event loop and only then marks the
    session loaded. The loop can start the callback before that mark, and page changes made
    then bypass Panel's hold on the document: Bokeh raises "_pending_writes should be
    non-None ..." and the change is lost (the Steering page came up without its URL feature
    in about one full browser-test run out of three). So the callback first waits for the
    mark (milliseconds), at most `wait_s` seconds.
    """

    async def after_load() -> None:
        deadline = time.monotonic() + wait_s
        while not pn.state.loaded and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await make_coroutine()

    pn.state.onload(after_load)
