from __future__ import annotations

import uuid

from parity.runners.models import Runner, RunnerModel
from parity.runners.schemas import Capabilities, ModelInfo, RunnerRead
from parity.runners.service import derived_status


def runner_read(r: Runner, models: list[RunnerModel], active: int) -> RunnerRead:
    return RunnerRead(
        id=r.id,
        device_id=r.device_id,
        owner_address=r.owner_address,
        wallet_address=r.owner_address,
        status=derived_status(r, active),
        reported_status=r.status,
        webhook=r.webhook_url,
        capabilities=Capabilities(
            cpu_cores=r.cpu_cores,
            memory_mb=r.memory_mb,
            gpus=r.gpus,
            docker=r.docker,
            fl=r.fl,
            fl_datasets=list(r.fl_datasets or []),
        ),
        max_concurrent_tasks=r.max_concurrent_tasks,
        labels=r.labels or {},
        models=[
            ModelInfo(model_name=m.model_name, is_loaded=m.is_loaded, max_tokens=m.max_tokens)
            for m in models
        ],
        active_claims=active,
        runner_version=r.runner_version,
        cpu_usage=r.cpu_usage,
        memory_usage=r.memory_usage,
        last_heartbeat=r.last_heartbeat,
        banned=r.banned_at is not None,
        created_at=r.created_at,
        updated_at=r.updated_at,
    )


def by_id(models: dict[uuid.UUID, list[RunnerModel]], rid: uuid.UUID) -> list[RunnerModel]:
    return models.get(rid, [])
