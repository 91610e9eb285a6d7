"""The optional shared token that our server demands of our clients (see codec: ``AUTH``).

One place resolves it: the ``token=`` argument, else the :data:`TOKEN_ENV` environment
variable, else none (the server serves anyone, torch's clients included, as torch's does).
The token is a secret: it is never logged, never put on a command line (a server process gets
it through its environment), and compared in constant time.
"""

from __future__ import annotations

import os

__all__ = ["TOKEN_ENV", "resolve_token"]

#: The environment variable holding the token when ``token=`` is not given.
TOKEN_ENV = "STOREHARNESS_TOKEN"


def resolve_token(token: str | None) -> str | None:
    """``token``, else the environment's, else ``None``; raises ``TypeError`` for a non-str
    and ``ValueError`` for an empty one (it would protect nothing)."""
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
        source = TOKEN_ENV
    else:
        source = "token="
    if token is None:
        return None
    if not isinstance(token, str):
        raise TypeError(f"{source} must be a str, got {type(token).__name__}")
    if not token:
        raise ValueError(f"{source} must not be empty (give no token to serve without one)")
    return token
