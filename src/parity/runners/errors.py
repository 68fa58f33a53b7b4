from __future__ import annotations

from parity.errors import Category, Conflict, Forbidden, InvalidInput, NotFound, ParityError


class RunnerNotFound(NotFound):
    code = "runner_not_found"


class DeviceOwnedByOtherWallet(Conflict):
    code = "device_owned_by_other_wallet"


class RunnerBanned(Forbidden):
    code = "runner_banned"


class RunnerVersionTooOld(ParityError):
    code = "runner_version_too_old"
    category = Category.UPGRADE_REQUIRED


class WebhookUrlRefused(InvalidInput):
    code = "webhook_url_refused"


class RunnerTokenRequired(Forbidden):
    code = "runner_token_required"
