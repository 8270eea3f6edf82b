"""The one exception a service raises when the data, not the caller, refuses a request.

A front end maps it to its own way of saying no: the CLI exits 1 with the message, an asset fails
with it. Kept apart from any heavy import so the CLI can name it before it loads anything else.
"""

from __future__ import annotations


class Refused(Exception):
    """The data refuses the request (an empty database, nothing left to analyse): the message says why."""
