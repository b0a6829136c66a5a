"""The one exception type a user sees.

Every problem caused by the user's input (a file that is not a raster, a band that does not exist,
a weights file for another architecture, ...) raises :class:`GeoExploraError` with a one-line
message that names the file or value and says what is wrong. The CLI prints that line and exits
with status 2; it never shows a traceback for these.
"""

from __future__ import annotations


class GeoExploraError(ValueError):
    """A user-facing error: its message is one line naming the file or value and the problem."""
