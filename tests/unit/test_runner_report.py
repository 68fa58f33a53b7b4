"""What the runner reports for a run whose whole output is too large to keep inline: its CID
when the upload succeeds, and, when the content store refuses it (a quota), a completion whose
``error`` says the whole output was not kept, so the client is told."""

from __future__ import annotations

from typing import Any

from eth_account import Account

from parity.agent.client import ServerClient
from parity.agent.executors import CancelToken, Outcome
from parity.agent.loop import Active, Runner, RunnerOptions

ACCOUNT = Account.from_key("0x" + "46" * 32)


class Client(ServerClient):
    def __init__(self, refuse: Exception | None) -> None:
        super().__init__("http://unused.test")
        self.refuse = refuse
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    async def upload_output(self, task_id: str, claim_token: str, data: bytes) -> str:
        assert (task_id, claim_token) == ("t-1", "claim-token-0123456789")  # the task's route
        if self.refuse is not None:
            raise self.refuse
        return "bafy-whole-output"

    async def transition(self, task_id: str, action: str, body: dict[str, Any]) -> Any:
        self.sent.append((task_id, action, body))
        return {}


async def _report(refuse: Exception | None) -> dict[str, Any]:
    client = Client(refuse)
    runner = Runner(
        RunnerOptions(device_id="d", max_concurrent_tasks=1, pull=False, push=False),
        ACCOUNT,
        client,
        {},
    )
    outcome = Outcome(True, 0, "start\n[output truncated]", full_output=b"x" * 100_000)
    await runner._report(Active("t-1", "claim-token-0123456789", CancelToken()), outcome)
    await client.close()
    [(task_id, action, body)] = client.sent
    assert (task_id, action) == ("t-1", "complete")
    return body


async def test_the_whole_output_goes_to_the_content_store_by_cid() -> None:
    body = await _report(None)
    assert body["output_cid"] == "bafy-whole-output" and "error" not in body


async def test_a_refused_upload_is_said_in_the_completion() -> None:
    body = await _report(RuntimeError("409 storage_quota_exceeded: quota of 1000 bytes"))
    assert "output_cid" not in body
    assert body["error"].startswith("the whole output (100000 bytes) could not be stored")
    assert "storage_quota_exceeded" in body["error"]
