"""What a runner's claim of an ``fl_train`` task carries beyond the task row.

The round's global model rides along inline (``global_model.data_base64``: its safetensors
bytes, base64) when it is at most :data:`INLINE_MODEL_MAX_BYTES`, so a participant starts
training without a download request of its own: one request fewer per participant and round.
The task row itself still names the model by CID and sha256 only (the model lives once, in
the content store), the runner checks the inline bytes against that sha256, and a claim
answered without them (a larger model, a store that cannot be read now, a claim returned at
re-registration) is served by ``GET /storage/download/{cid}`` as before.
"""

from __future__ import annotations

import base64
from typing import Any

from parity.errors import ParityError
from parity.fl import store_io
from parity.fl.deps import FLDeps
from parity.fl.views import MODEL_FORMAT
from parity.logging import get_logger

INLINE_MODEL_MAX_BYTES = 256 * 1024
log = get_logger("parity.fl")


async def with_inline_model(deps: FLDeps, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the global model's bytes inline when small enough and readable now;
    otherwise ``config`` unchanged."""
    ref = config.get("global_model")
    if not isinstance(ref, dict) or ref.get("format") != MODEL_FORMAT:
        return config
    try:
        data = await store_io.get_bytes(
            deps.store,
            str(ref.get("cid")),
            max_bytes=INLINE_MODEL_MAX_BYTES,
            sha256=str(ref.get("sha256")),
        )
    except ParityError:
        return config  # too large, or not readable now: the runner downloads it
    except Exception as exc:
        # The claim has committed: its answer must go out, with the model or without it.
        log.warning("fl_inline_model_skipped", cid=str(ref.get("cid")), error=repr(exc)[:200])
        return config
    inline = {**ref, "data_base64": base64.b64encode(data).decode("ascii")}
    return {**config, "global_model": inline}
