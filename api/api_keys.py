"""The API keys a server accepts (--api-key, --api-key-file) and the tenant each key stands for.

Under keys, each key is a tenant: its requests get a cache salt of their own, so no two tenants
share prefix-cache blocks and none can learn another's prompts from how fast its own come back.
"""

import hashlib
import hmac
from pathlib import Path

from aiohttp import web


def load_api_keys(api_key: str | None, api_key_file: str | None) -> tuple[str, ...]:
    """--api-key and the lines of --api-key-file (blank lines and '#' comments skipped).
    ValueError for a file that cannot be read or holds no key."""
    keys = [api_key] if api_key else []
    if api_key_file:
        try:
            lines = Path(api_key_file).read_text().splitlines()
        except OSError as error:
            raise ValueError(f"--api-key-file: cannot read {api_key_file}: {error.strerror}") from None
        from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not from_file:
            raise ValueError(f"--api-key-file: {api_key_file} holds no key")
        keys += from_file
    return tuple(dict.fromkeys(keys))


def is_accepted(supplied: str, keys: tuple[str, ...]) -> bool:
    """Compares with every key, in constant time each, so the answer's timing tells nothing."""
    matches = [hmac.compare_digest(supplied.encode(), key.encode()) for key in keys]
    return any(matches)


def supplied_api_key(request: web.Request) -> str | None:
    """The key sent as 'Authorization: Bearer <key>' or in x-api-key."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key")


def key_digest(key: str) -> str:
    """Stands for a key wherever it must be told apart but never held: sessions, cache salts."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]
