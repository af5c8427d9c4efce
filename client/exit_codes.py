"""The exit codes of ``etm``, one table for every subcommand (local and remote), and which failure gives
which. docs/CLIENT.md documents the same table."""

from __future__ import annotations

import re
from enum import IntEnum

from client.errors import ApiError, ConnectionFailed, EtmError, JobFailed, WaitTimeout
from client.hints import as_commands
from client.http import ENV_URL


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # a gate requirement failed; a waited-for job failed, was canceled, or outlasted --timeout
    USAGE = 2  # bad usage or input, the message says what to fix; includes the service's 4xx answers and a
    #            model the sandbox refused, killed or timed out on (etm score, salience, merge)
    SERVICE = 3  # the service could not be reached (after --retries tries) or answered 5xx
    INTERNAL = 4  # a bug in etm, traceback on stderr; not 1, so that CI does not take a crash for a failed gate
    NOT_FINISHED = 75  # the job is still queued or running: try again later, or --wait (sysexits' EX_TEMPFAIL)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)


class UsageError(Exception):
    """Bad arguments or input that argparse cannot see (exit ``USAGE``)."""


def exit_code_for(exc: BaseException) -> tuple[ExitCode, str]:
    """The exit code a failure gives and the line ``etm`` prints for it (after ``etm: ``)."""
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted"
    if isinstance(exc, (JobFailed, WaitTimeout)):
        return ExitCode.FAILED, str(exc)
    if isinstance(exc, ApiError):
        if exc.slug == "job-not-finished":  # 409: still queued/running (try later), or ended without a report
            still = re.search(r"\bis (queued|running)\b", exc.detail) is not None
            return (ExitCode.NOT_FINISHED if still else ExitCode.FAILED), as_commands(exc.detail)
        code = ExitCode.SERVICE if exc.status >= 500 else ExitCode.USAGE
        return code, f"the service answered {exc.status} {exc.title}: {as_commands(exc.detail)}"
    if isinstance(exc, ConnectionFailed):
        return ExitCode.SERVICE, f"{exc}; is the service running? (--url or ${ENV_URL})"
    if isinstance(exc, EtmError):
        return ExitCode.SERVICE, str(exc)
    # ValueError covers bad JSON, unreadable requirements (RequirementError) and the domain's BadInput.
    if isinstance(exc, (UsageError, ValueError, FileNotFoundError, IsADirectoryError)):
        return ExitCode.USAGE, f"error: {exc}"
    return ExitCode.INTERNAL, f"internal error: {exc}"
