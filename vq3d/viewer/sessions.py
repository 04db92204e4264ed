"""Per-tab viewer state: each browser tab holds a session id; the server keeps its scene.

`SessionStore` is a bounded, thread-safe map from session ids (random, unguessable) to
`Session`s; when full, creating a session drops the least recently used one, whose tab then
gets a "session expired" message and starts over.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


@dataclass
class SceneEntry:
    """One decoded scene and what it came from.

    scene: triplanes (1, 3, C, R, R) or a bound implicit field (batch 1).
    source: a line for the page ("upload photo.jpg", "class sphere, seed 3").
    input_crop: the (res, res, 3) uint8 centre crop the encoder saw (uploads only).
    version: increases with every new scene of the session (frame URLs include it).
    cache: derived results of this scene (the extracted mesh), dropped with it.
    """

    scene: Any
    source: str
    input_crop: np.ndarray | None
    version: int
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass
class Session:
    id: str
    entry: SceneEntry | None = None
    versions: int = 0

    def set_scene(self, scene: Any, source: str, input_crop: np.ndarray | None = None) -> SceneEntry:
        """Replace the session's scene (one assignment: a reader sees the old or the new one)."""
        self.versions += 1
        entry = SceneEntry(scene, source, input_crop, self.versions)
        self.entry = entry
        return entry


class UnknownSession(KeyError):
    """The session id is malformed, was never issued, or its session was dropped."""


class SessionStore:
    """At most `max_sessions` sessions, least recently used dropped first."""

    def __init__(self, max_sessions: int = 16) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def create(self) -> Session:
        session = Session(secrets.token_urlsafe(16))
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session:
        """The session (marked as recently used), or UnknownSession."""
        if not session_id or not _SESSION_ID.match(session_id):
            raise UnknownSession(session_id)
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise UnknownSession(session_id)
            self._sessions.move_to_end(session_id)
            return session
