"""The queue's hot statements on PostgreSQL, in the driver's own terms.

Claim, start and complete run here as plain SQL on the pooled connection's asyncpg connection:
SQLAlchemy's per-statement work (compile-cache lookup, parameter and result processing, the
greenlet hop) costs more CPU than these short statements themselves. Start and complete are one
statement each (data-modifying CTEs), so each commits on its own; the claim keeps its three
statements in one transaction because the runner's usage must be read *after* its row lock is
granted (a single statement would see the snapshot taken before the wait, and two concurrent
claims of one runner could overcommit it).

Same rules as the general statements in ``claim_repository`` and ``queue_repository`` (which
still serve SQLite, repeats and refusals to explain, and completions of priced work); the
queue's test suite runs on PostgreSQL through this module.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The status and type strings below are core.tasks.states' values, written out (the statements
# are constants; tests/unit/test_pg_queue.py checks them against the enums).


class RecordView:
    """Attribute access over an asyncpg record, as a SQLAlchemy row offers it."""

    __slots__ = ("_record",)

    def __init__(self, record: Any) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        try:
            return self._record[name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self) -> Any:
        return iter(self._record.values())


LOCK_RUNNER = """
SELECT id, status, drain_requested, banned_at, max_concurrent_tasks, cpu_cores, memory_mb, gpus,
       docker, labels
FROM runners WHERE id = $1 FOR UPDATE
"""

# $1 runner, $2 now, $3 max concurrent, $4 cpu, $5 memory MB, $6 GPUs, $7 docker, $8 limit
_CANDIDATES_WHERE = """
WITH runner_usage AS (
  SELECT count(*) AS used_count, coalesce(sum(req_cpu_cores), 0.0) AS used_cpu,
         coalesce(sum(req_memory_mb), 0) AS used_memory, coalesce(sum(req_gpus), 0) AS used_gpus
  FROM tasks WHERE runner_id = $1 AND status IN ('assigned', 'cancel_requested', 'running')
)
SELECT t.id, t.req_cpu_cores, t.req_memory_mb, t.req_gpus, t.req_docker, t.required_labels,
       u.used_count, u.used_cpu, u.used_memory, u.used_gpus
FROM tasks t, runner_usage u
WHERE u.used_count < $3
  AND t.status = 'pending' AND t.available_at <= $2
  AND (t.target_runner_id IS NULL OR t.target_runner_id = $1
       OR (t.offer_expires_at < $2 AND t.type IN ('command', 'docker')))
  AND t.req_cpu_cores <= $4::float8 - u.used_cpu + 1e-9
  AND t.req_memory_mb <= $5::bigint - u.used_memory
  AND t.req_gpus <= $6::bigint - u.used_gpus
  AND NOT EXISTS (SELECT 1 FROM task_exclusions x WHERE x.task_id = t.id AND x.runner_id = $1)
  AND (t.req_docker IS false OR $7::boolean)
"""
CANDIDATES = (
    _CANDIDATES_WHERE
    + """ORDER BY t.priority DESC, t.available_at, t.id
LIMIT $8 FOR UPDATE OF t SKIP LOCKED
"""
)
# The same for one named task ($9): a claim after a push offer.
CANDIDATE_BY_ID = (
    _CANDIDATES_WHERE
    + """  AND t.id = $9
LIMIT $8 FOR UPDATE OF t SKIP LOCKED
"""
)

# $1 ids, $2 runner, $3 token hash, $4 lease until, $5 now, $6 start
MARK_CLAIMED = """
WITH claimed AS (
  UPDATE tasks SET
    status = CASE WHEN $6::boolean THEN 'running'
                  ELSE 'assigned' END,
    runner_id = $2, attempts = attempts + 1, claim_token_hash = $3, lease_expires_at = $4,
    updated_at = $5, offer_expires_at = NULL,
    started_at = CASE WHEN $6::boolean THEN $5 ELSE started_at END
  WHERE id = ANY($1::uuid[]) AND status = 'pending'
  RETURNING tasks.*
), opened AS (
  INSERT INTO task_attempts (id, task_id, attempt, runner_id, claim_token_hash, claimed_at,
                             started_at)
  SELECT gen_random_uuid(), c.id, c.attempts, $2, $3, $5,
         CASE WHEN $6::boolean THEN $5::timestamptz END
  FROM claimed c
)
SELECT * FROM claimed
"""

# $1 task, $2 token hash, $3 runner, $4 now
START_HELD = """
WITH started AS (
  UPDATE tasks SET status = 'running', started_at = $4, updated_at = $4
  WHERE id = $1 AND claim_token_hash = $2 AND runner_id = $3
    AND status = 'assigned'
  RETURNING tasks.*
), attempt AS (
  UPDATE task_attempts a SET started_at = $4
  FROM started s WHERE a.task_id = s.id AND a.attempt = s.attempts
)
SELECT * FROM started
"""

# $1 task, $2 token hash, $3 runner, $4 now, $5 exit code, $6 result id, $7 output,
# $8 output CID, $9 error, $10 result hash, $11 usage (JSON text), $12 event id,
# $13 operators (their endpoints get every owner's events)
COMPLETE_HELD = """
WITH done AS (
  UPDATE tasks SET status = 'completed',
    started_at = coalesce(started_at, $4), completed_at = $4, updated_at = $4,
    lease_expires_at = NULL, claim_token_hash = NULL
  WHERE id = $1 AND claim_token_hash = $2 AND runner_id = $3
    AND status IN ('assigned', 'cancel_requested', 'running')
  RETURNING tasks.*
), ended AS (
  UPDATE task_attempts a SET started_at = coalesce(a.started_at, d.started_at), ended_at = $4,
    outcome = 'completed', exit_code = $5::integer
  FROM done d WHERE a.task_id = d.id AND a.attempt = d.attempts
), result AS (
  INSERT INTO task_results (id, task_id, attempt, runner_id, output, output_cid, exit_code,
                            error, result_hash, usage, execution_seconds, created_at)
  SELECT $6, d.id, d.attempts, $3, $7, $8, $5::integer, $9, $10, $11::json,
         greatest(extract(epoch FROM $4::timestamptz - d.started_at), 0), $4
  FROM done d
), event AS (
  INSERT INTO events (id, type, owner_address, resource_id, data, created_at)
  SELECT $12, 'task.completed', lower(d.creator_address), d.id::text,
         json_build_object('task_id', d.id::text, 'status', d.status, 'title', d.title,
                           'attempts', d.attempts),
         $4
  FROM done d
  RETURNING id, owner_address
), delivery AS (
  INSERT INTO webhook_deliveries (id, endpoint_id, event_id, status, attempts, next_attempt_at,
                                  created_at)
  SELECT gen_random_uuid(), w.id, e.id, 'pending', 0, $4, $4
  FROM event e JOIN webhook_endpoints w
    ON w.enabled AND (w.owner_address = e.owner_address OR w.owner_address = ANY($13::text[]))
  WHERE w.event_types::jsonb ? 'task.completed'
  RETURNING 1
)
SELECT d.*,
  (SELECT count(*) FROM delivery) AS deliveries,
  EXISTS (SELECT 1 FROM tasks p WHERE p.status = 'pending'
          AND p.target_runner_id IS NULL AND p.available_at <= $4
          AND p.type IN ('command', 'docker'))
    AS due,
  EXISTS (SELECT 1 FROM runners r WHERE r.status = 'online' AND r.banned_at IS NULL
          AND r.webhook_url IS NOT NULL AND r.webhook_secret IS NOT NULL) AS push
FROM done d
"""


async def lock_runner(conn: Any, runner_id: uuid.UUID) -> Any:
    return await conn.fetchrow(LOCK_RUNNER, runner_id)


async def claim_candidates(
    conn: Any,
    runner_id: uuid.UUID,
    now: datetime,
    *,
    cpu_cores: float,
    memory_mb: int,
    gpus: int,
    max_concurrent_tasks: int,
    docker: bool,
    limit: int,
    task_id: uuid.UUID | None = None,
) -> list[RecordView]:
    """Pending tasks this runner may claim now, in claim order, locked (SKIP LOCKED), each
    with the runner's usage: all of them, or only ``task_id``."""
    args = [runner_id, now, max_concurrent_tasks, float(cpu_cores), memory_mb, gpus, docker, limit]
    if task_id is None:
        rows = await conn.fetch(CANDIDATES, *args)
    else:
        rows = await conn.fetch(CANDIDATE_BY_ID, *args, task_id)
    return [RecordView(r) for r in rows]


async def mark_claimed(
    conn: Any,
    ids: Sequence[uuid.UUID],
    runner_id: uuid.UUID,
    token_hash: str,
    now: datetime,
    lease_until: datetime,
    start: bool,
) -> list[RecordView]:
    rows = await conn.fetch(MARK_CLAIMED, list(ids), runner_id, token_hash, lease_until, now, start)
    return [RecordView(r) for r in rows]


async def start_held(
    conn: Any, task_id: uuid.UUID, runner_id: uuid.UUID, token_hash: str, now: datetime
) -> RecordView | None:
    row = await conn.fetchrow(START_HELD, task_id, token_hash, runner_id, now)
    return None if row is None else RecordView(row)


@dataclass(frozen=True)
class Completed:
    task: RecordView
    deliveries: int  # webhook deliveries queued for the task.completed event
    due: bool  # an untargeted task is due (a re-offer may place it)
    push: bool  # a push-capable runner is online


async def complete_held(
    conn: Any,
    task_id: uuid.UUID,
    runner_id: uuid.UUID,
    token_hash: str,
    now: datetime,
    *,
    exit_code: int | None,
    output: str | None,
    output_cid: str | None,
    error: str | None,
    result_hash: str | None,
    usage: dict[str, Any],
    admins: Collection[str],
) -> Completed | None:
    """Complete, close the attempt, store the result, record ``task.completed`` with its
    webhook deliveries: one statement. None when the task is not active under this claim."""
    row = await conn.fetchrow(
        COMPLETE_HELD,
        task_id,
        token_hash,
        runner_id,
        now,
        exit_code,
        uuid.uuid4(),
        output,
        output_cid,
        error,
        result_hash,
        json.dumps(usage),
        uuid.uuid4(),
        sorted(admins),
    )
    if row is None:
        return None
    return Completed(RecordView(row), int(row["deliveries"]), bool(row["due"]), bool(row["push"]))
