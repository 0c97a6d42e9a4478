"""The one exception type for user errors: a bad setting, input file or checkpoint.

Raise :class:`UserError` with a message that names the field (``model.distill_layers``,
``data.long.urls``) or the file, and says the fix. The ``longred`` command prints such
errors on one line (``longred: error: ...``) with exit status 2 and no traceback;
``--debug`` or ``LONGRED_DEBUG=1`` shows the traceback. It subclasses ``ValueError`` so
code that catches ``ValueError`` keeps working.
"""

from __future__ import annotations


class UserError(ValueError):
    """A user-fixable error; its message names the field or file and the fix."""
