"""What the calls return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class Lock:
    """A grant: pass ``fence`` to what you write, hand ``token`` to whoever releases."""

    name: str
    token: str
    fence: int
    lease_ms: int
    expires_at: str
    #: Set (a ``threading.Event`` or an ``asyncio.Event``) when ``lock()`` lost the grant.
    lost: Any = None
    #: ``expired`` or ``released`` once lost.
    lost_reason: Optional[str] = None

    def mark_lost(self, reason: str) -> None:
        """Records the loss once: the first reason stays, ``lost`` is set."""
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()

    @classmethod
    def from_grant(cls, grant: Dict[str, Any], lost: Any = None) -> "Lock":
        """Fields a newer service adds are ignored (forward compatibility)."""
        return cls(grant["name"], grant["token"], grant["fence"], grant["lease_ms"], grant["expires_at"], lost)


@dataclass
class Batch:
    """The rows found, in the order asked, and the ids with no row."""

    transcriptions: List[Dict[str, Any]] = field(default_factory=list)
    missing: List[int] = field(default_factory=list)

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "Batch":
        """Fields a newer service adds are ignored (forward compatibility)."""
        return cls(body.get("transcriptions", []), body.get("missing", []))
