"""Federated-learning errors, each with a stable code; the HTTP status comes from the category
(parity.api.errors)."""

from __future__ import annotations

from parity.errors import Conflict, Forbidden, InvalidInput, NotFound


class SessionNotFound(NotFound):
    """No such session, or one the caller may not see (answered alike)."""

    code = "session_not_found"


class RoundNotFound(NotFound):
    code = "round_not_found"


class NoGlobalModel(NotFound):
    """The session has no global model yet (it has not started)."""

    code = "no_global_model"


class SessionStateConflict(Conflict):
    """The session's status does not allow the request. The code says which rule:
    ``session_not_pending`` (start), ``session_finished`` (cancel), ``session_not_active``."""

    code = "session_state_conflict"


class InsufficientRunners(Conflict):
    """Too few online runners advertise FL (and the named runner dataset) to start."""

    code = "insufficient_runners"


class RoundClosed(Conflict):
    """An update for a round that no longer collects updates."""

    code = "round_closed"


class UpdateConflict(Conflict):
    """Another update under a claim whose update was already accepted: a repeat (a retry after
    a timeout) must be the same request."""

    code = "update_conflict"


class NotAParticipant(Forbidden):
    """The calling runner holds no slot in that round."""

    code = "not_a_participant"


class ContentInvalid(InvalidInput):
    """Stored content an FL request names cannot be used: absent from the store, larger than
    allowed, or not the bytes its sha256 says. ``field`` names where the CID came from."""

    code = "content_invalid"
