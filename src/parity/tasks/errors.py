from __future__ import annotations

from parity.errors import Conflict, Forbidden, NotFound, RateLimited, Unavailable


class TaskNotFound(NotFound):
    code = "task_not_found"


class TaskNotClaimable(Conflict):
    code = "task_not_claimable"


class StaleClaim(Conflict):
    code = "stale_claim"


class ClaimInvalid(Conflict):
    code = "claim_invalid"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class TaskNotEditable(Conflict):
    code = "task_not_pending"


class TaskNotCancellable(Conflict):
    code = "task_not_cancellable"


class RunnerNotEligible(Forbidden):
    code = "runner_not_eligible"


class TooManyPending(RateLimited):
    code = "too_many_pending_tasks"
    retry_after = 5


class QueueFull(Unavailable):
    code = "queue_full"
    retry_after = 10
