"""Webhook secrets sealed at rest: Fernet (AES-128-CBC + HMAC-SHA256) at the store boundary.

:class:`SealedSecrets` wraps any job store: it seals ``webhook_secret`` on the way in
(``add_key``, ``set_webhook_secret``) and opens it on the way out, so neither backend
ever holds a secret in clear and neither backend's code knows about it.

The key comes from ``RETROIVA_SECRETS_KEY`` (Fernet keys, comma-separated, newest
first: the first seals, every one opens), or is generated once into
``<data_dir>/secrets.key`` (mode 0600) beside ``signing.key``.  Rotation: put the new
key first and the old one after it, restart, run ``python -m serve_app.access.secret_box
reseal`` (every secret re-sealed under the new key), then drop the old key.  A value
written before encryption existed (no ``fernet:`` prefix) is read as it is and sealed
by :meth:`SealedSecrets.init`.  A rotated-out secret (``previous_webhook_secret``, kept
for the rotation's overlap) is sealed as it was; ``reseal`` leaves it, and one that no
configured key opens is read as expired, since it only lengthens validity.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import Any, cast

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from serve_app.access.private_files import write_once
from serve_app.jobs.records import ApiKeyRecord
from serve_app.jobs.store import JobStore

__all__ = ["SealedSecrets", "SecretBox", "load_secret_box", "reseal", "sealed"]

_PREFIX = "fernet:"


class SecretBox:
    """Seals and opens short secrets under one or more Fernet keys (the first seals)."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one secrets key is needed")
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    def __repr__(self) -> str:
        return "SecretBox(...)"

    def seal(self, secret: str) -> str:
        return _PREFIX + self._fernet.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        """The secret in ``stored``; a value without the prefix is a legacy clear one."""
        if not stored.startswith(_PREFIX):
            return stored
        try:
            return self._fernet.decrypt(stored.removeprefix(_PREFIX).encode()).decode()
        except InvalidToken:
            raise ValueError(
                "a webhook secret does not open with any configured secrets "
                "key (RETROIVA_SECRETS_KEY or data_dir/secrets.key)"
            ) from None

    @staticmethod
    def is_sealed(stored: str) -> bool:
        return stored.startswith(_PREFIX)


def load_secret_box(configured: str | None, data_dir: Path) -> SecretBox:
    """The box for ``RETROIVA_SECRETS_KEY``, or for ``data_dir/secrets.key`` (made once)."""
    if configured:
        return SecretBox([k.strip().encode() for k in configured.split(",") if k.strip()])
    return SecretBox([write_once(data_dir / "secrets.key", Fernet.generate_key())])


class SealedSecrets:
    """A :class:`~serve_app.jobs.store.JobStore` whose keys' webhook secrets are sealed.

    Every other method is the wrapped store's own.
    """

    def __init__(self, store: JobStore, box: SecretBox) -> None:
        self.store = store
        self.box = box

    def __repr__(self) -> str:
        return f"SealedSecrets({self.store!r})"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def _open(self, key: ApiKeyRecord | None) -> ApiKeyRecord | None:
        if key is None:
            return None
        previous = key.previous_webhook_secret
        if previous is not None:
            # A rotated-out secret only lengthens validity for a while: one sealed
            # under a secrets key since dropped is treated as expired, not as an error.
            try:
                previous = self.box.open(previous)
            except ValueError:
                previous = None
        return dataclasses.replace(
            key, webhook_secret=self.box.open(key.webhook_secret), previous_webhook_secret=previous
        )

    async def init(self) -> None:
        await self.store.init()
        for key in await self.store.list_keys():
            if not self.box.is_sealed(key.webhook_secret):  # stored before encryption
                await self.store.set_webhook_secret(key.id, self.box.seal(key.webhook_secret))

    async def add_key(self, key: ApiKeyRecord) -> None:
        await self.store.add_key(
            dataclasses.replace(key, webhook_secret=self.box.seal(key.webhook_secret))
        )

    async def key_by_digest(self, digest: str) -> ApiKeyRecord | None:
        return self._open(await self.store.key_by_digest(digest))

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        return self._open(await self.store.get_key(key_id))

    async def list_keys(self) -> list[ApiKeyRecord]:
        return [k for k in map(self._open, await self.store.list_keys()) if k is not None]

    async def find_keys(self, reference: str) -> list[ApiKeyRecord]:
        return [k for k in map(self._open, await self.store.find_keys(reference)) if k is not None]

    async def set_webhook_secret(self, key_id: str, secret: str) -> bool:
        return await self.store.set_webhook_secret(key_id, self.box.seal(secret))

    async def rotate_webhook_secret(
        self, key_id: str, secret: str, previous_valid_until: float, now: float | None = None
    ) -> bool:
        # The current secret moves to previous as stored: already sealed.
        return await self.store.rotate_webhook_secret(
            key_id, self.box.seal(secret), previous_valid_until, now
        )


def sealed(store: JobStore, box: SecretBox) -> JobStore:
    """``store`` behind :class:`SealedSecrets`, typed as the store it stands in for."""
    return cast(JobStore, SealedSecrets(store, box))


async def reseal(store: JobStore) -> int:
    """Re-seal every key's secret under the first key; ``store`` is a sealed store.

    Opening takes any configured key; writing seals with the first one.
    """
    keys = await store.list_keys()
    for key in keys:
        await store.set_webhook_secret(key.id, key.webhook_secret)
    return len(keys)


def _main(argv: list[str]) -> None:
    from serve_app.jobs.store import open_store
    from serve_app.settings import Settings

    if argv != ["reseal"]:
        sys.exit("usage: python -m serve_app.access.secret_box reseal")

    async def run() -> int:
        store = open_store(Settings())  # sealed with the configured keys
        await store.init()
        try:
            return await reseal(store)
        finally:
            await store.close()

    print(f"re-sealed {asyncio.run(run())} webhook secrets under the first secrets key")


if __name__ == "__main__":
    _main(sys.argv[1:])
