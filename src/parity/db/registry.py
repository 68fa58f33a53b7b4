"""Imports every domain's models so Base.metadata is complete (Alembic, tests)."""

from parity.auth import models as auth_models
from parity.db.base import Base
from parity.events import models as event_models
from parity.fl import models as fl_models
from parity.fl import secagg_models as fl_secagg_models
from parity.idempotency import models as idempotency_models
from parity.ledger import models as ledger_models
from parity.llm import models as llm_models
from parity.runners import models as runner_models
from parity.storage import models as storage_models
from parity.tasks import models as task_models

__all__ = [
    "Base",
    "auth_models",
    "event_models",
    "fl_models",
    "fl_secagg_models",
    "idempotency_models",
    "ledger_models",
    "llm_models",
    "runner_models",
    "storage_models",
    "task_models",
]
