"""Users, roles, passwords and bearer tokens for the web side.

Passwords are hashed with argon2id (``argon2-cffi``); a login returns a random bearer token
(RFC 6750) of which only the SHA-256 is stored, with its expiry. Roles decide which *endpoint
family* a user may reach (:data:`PERMISSIONS`); the web edge classifies each request into a
family and asks :func:`allowed` (and :func:`refusal_reason` for the reason of a 403).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import IntegrityError

from pacs.errors import PacsError
from pacs.index import auth_repo
from pacs.index.database import Database
from pacs.model import Origin

log = logging.getLogger("pacs.auth")


class Role(enum.StrEnum):
    """What a user is for."""

    ADMIN = "admin"
    RADIOLOGIST = "radiologist"  # reads everything, stores via STOW
    APPRAISER = "appraiser"  # the appraisal API only: no DICOMweb (no searches, metadata, pixels)
    MODALITY_UPLOAD = "modality-upload"  # STOW only
    ORDERS = "orders"  # the HIS: /api/orders and patient updates, nothing else


class Family(enum.StrEnum):
    """Endpoint families (the unit of permission)."""

    SEARCH = "search"  # QIDO-RS
    METADATA = "metadata"  # WADO-RS metadata
    RETRIEVE = "retrieve"  # WADO-RS instances, series, studies (Part-10 / bulk download)
    PIXELS = "pixels"  # frames, rendered, thumbnails, bulk data
    STORE = "store"  # STOW-RS
    APPRAISAL = "appraisal"  # /api/appraisal
    AUDIT = "audit"  # /api/audit
    ORDERS = "orders"  # /api/orders, /api/patients (the HIS's door without HL7)
    SESSION = "session"  # /api/auth/me: any signed-in user
    ADMIN = "admin"  # anything else under /api


PERMISSIONS: dict[Role, frozenset[Family]] = {
    Role.ADMIN: frozenset(Family),
    Role.RADIOLOGIST: frozenset(
        {
            Family.SEARCH,
            Family.METADATA,
            Family.RETRIEVE,
            Family.PIXELS,
            Family.STORE,
            Family.APPRAISAL,
            Family.SESSION,
        }
    ),
    # QIDO-RS with includefield=all, metadata and the viewer show every patient's demographics;
    # an appraiser needs the acquisition facts of the appraisal API, nothing more (issue 14).
    Role.APPRAISER: frozenset({Family.APPRAISAL, Family.SESSION}),
    Role.MODALITY_UPLOAD: frozenset({Family.STORE, Family.SESSION}),
    Role.ORDERS: frozenset({Family.ORDERS, Family.SESSION}),
}

#: What a role is limited to, said in a 403 for a family it does not have.
SCOPES: dict[Role, str] = {
    Role.APPRAISER: "the appraiser role may use only the appraisal API (/api/appraisal/...)",
    Role.MODALITY_UPLOAD: "the modality-upload role may only store instances (STOW-RS)",
    Role.ORDERS: "the orders role may only use /api/orders and /api/patients (the HIS door)",
}


def allowed(role: str, family: Family) -> bool:
    """Whether ``role`` may use endpoints of ``family``."""
    try:
        return family in PERMISSIONS[Role(role)]
    except ValueError:
        return False


def refusal_reason(role: str, family: Family) -> str:
    """The reason given to ``role`` when it is refused endpoints of ``family`` (HTTP 403)."""
    reason = f"role {role!r} may not use {family.value} endpoints"
    try:
        scope = SCOPES.get(Role(role))
    except ValueError:
        scope = None
    return f"{reason}: {scope}" if scope else reason


class AuthError(PacsError):
    """A user-management request that cannot be done (unknown user, bad role, name taken)."""


@dataclass(frozen=True)
class Principal:
    """A signed-in user, as the web edge sees it (``display_name`` is what Origin.user carries)."""

    name: str
    role: str
    expires_at: datetime | None = None

    @property
    def display_name(self) -> str:
        """The user name (starlette's ``BaseUser`` protocol)."""
        return self.name

    @property
    def is_authenticated(self) -> bool:
        """Always true for a principal (starlette's ``BaseUser`` protocol)."""
        return True


@dataclass(frozen=True)
class Token:
    """An issued bearer token (the only time its clear value exists)."""

    access_token: str
    expires_in: int
    user: Principal


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key (a sliding window, in memory)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> float:
        """Count one attempt; returns 0 when allowed, else the seconds until one is allowed again."""
        now = self.clock()
        with self._lock:
            q = self._hits.setdefault(key, deque())
            while q and q[0] <= now - self.window:
                q.popleft()
            if len(q) >= self.limit:
                return max(0.001, q[0] + self.window - now)
            q.append(now)
            if len(self._hits) > 10000:  # forget idle clients
                for k in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]:
                    del self._hits[k]
            return 0.0


class Auth:
    """User management, login and token checks over the index."""

    def __init__(
        self,
        db: Database,
        *,
        token_lifetime: timedelta = timedelta(hours=8),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.db = db
        self.token_lifetime = token_lifetime
        self.clock = clock
        self.hasher = hasher or PasswordHasher()
        self._dummy = ""  # a hash verified for unknown users (equal work), made on first use

    # ------------------------------------------------------------------ users

    def add_user(self, name: str, role: str, password: str) -> None:
        """Create a user (names: letters, digits, ``._@-``; passwords: at least 8 characters)."""
        if not _NAME.fullmatch(name):
            raise AuthError(f"invalid user name {name!r} (letters, digits, . _ @ -, at most 64)")
        try:
            role = Role(role).value
        except ValueError:
            raise AuthError(f"unknown role {role!r}; one of {', '.join(r.value for r in Role)}") from None
        if len(password) < 8:
            raise AuthError("the password must have at least 8 characters")
        digest = self.hasher.hash(password)
        try:
            with self.db.write() as conn:
                auth_repo.add_user(conn, name, role, digest, self.clock())
        except IntegrityError:
            raise AuthError(f"user {name!r} already exists") from None
        log.info("user %s added with role %s", name, role)

    def list_users(self) -> list[auth_repo.UserRow]:
        """Every user."""
        with self.db.read() as conn:
            return auth_repo.list_users(conn)

    def set_disabled(self, name: str, disabled: bool = True) -> None:
        """Disable (revoking every token) or re-enable a user."""
        with self.db.write() as conn:
            user = auth_repo.get_user(conn, name)
            if user is None:
                raise AuthError(f"no user {name!r}")
            auth_repo.set_user(conn, name, self.clock(), disabled=disabled)
            if disabled:
                auth_repo.revoke_tokens(conn, user.id)
        log.info("user %s %s", name, "disabled" if disabled else "enabled")

    def set_password(self, name: str, password: str) -> None:
        """Replace a user's password and revoke every token issued to them (a password is
        changed because it may be known to someone else: so may the sessions it opened)."""
        if len(password) < 8:
            raise AuthError("the password must have at least 8 characters")
        with self.db.write() as conn:
            user = auth_repo.get_user(conn, name)
            if user is None:
                raise AuthError(f"no user {name!r}")
            auth_repo.set_user(conn, name, self.clock(), password_hash=self.hasher.hash(password))
            revoked = auth_repo.revoke_tokens(conn, user.id)
        log.info("user %s: password changed, %d token(s) revoked", name, revoked)

    def logout(self, token: str) -> bool:
        """Revoke one bearer token (server-side sign-out); whether it was valid."""
        if not token or len(token) > 256:
            return False
        with self.db.write() as conn:
            return auth_repo.revoke_token(conn, _sha256(token))

    # ------------------------------------------------------------------ login and tokens

    def login(self, name: str, password: str, origin: Origin) -> Token | None:
        """A new bearer token for valid credentials of an enabled user; None otherwise.

        The same argon2 work is done for unknown users, so timing does not reveal names.
        """
        with self.db.read() as conn:
            user = auth_repo.get_user(conn, name) if _NAME.fullmatch(name or "") else None
        if not self._dummy:
            self._dummy = self.hasher.hash(secrets.token_hex(16))
        digest = user.password_hash if user else self._dummy
        ok: bool
        try:
            ok = self.hasher.verify(digest, password)
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or user is None or user.disabled:
            return None
        token = secrets.token_urlsafe(32)
        now = self.clock()
        expires = now + self.token_lifetime
        with self.db.write() as conn:
            auth_repo.add_token(conn, user.id, _sha256(token), now, expires, origin.address)
            if self.hasher.check_needs_rehash(user.password_hash):
                auth_repo.set_user(conn, user.name, now, password_hash=self.hasher.hash(password))
            auth_repo.purge_tokens(conn, now)
        return Token(
            access_token=token,
            expires_in=int(self.token_lifetime.total_seconds()),
            user=Principal(user.name, user.role, expires),
        )

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a valid, unexpired token of an enabled user; None otherwise."""
        if not token or len(token) > 256:
            return None
        with self.db.read() as conn:
            found = auth_repo.token_user(conn, _sha256(token), self.clock())
        if found is None:
            return None
        user, expires = found
        return Principal(user.name, user.role, expires)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
