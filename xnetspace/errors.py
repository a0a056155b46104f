"""The error of a spec, or of a spec or space file, that cannot describe a TransXNet.

Its own module so that both :mod:`xnetspace.text` (reading the files) and :mod:`xnetspace.spec`
(validating what they hold) raise it without importing each other; :mod:`xnetspace.spec`
re-exports it, as does the package.
"""
from __future__ import annotations

__all__ = ["SpecError"]


class SpecError(ValueError):
    """A spec (or spec file) that cannot describe a TransXNet; the message says why and where."""
