"""The one base class of expected failures: what the user can fix from the message.

Bad params, a missing input, data that does not fit the method: each stage raises
a subclass of :class:`UserError`, and the CLI prints it as one line that says what
to do. Anything else, a ``FileNotFoundError`` from a bug included, is not expected
and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can fix: the message says what was wrong and what to do."""


# The exit status of ``sslpipe`` after a UserError: the Prefect flow tells a user's
# mistake (never retried) from a failure that may pass (retried) by it.
USER_ERROR_EXIT_STATUS = 2
