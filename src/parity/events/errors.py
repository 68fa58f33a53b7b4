from __future__ import annotations

from parity.errors import Conflict, InvalidInput, NotFound


class WebhookNotFound(NotFound):
    code = "webhook_not_found"


class DeliveryNotFound(NotFound):
    code = "webhook_delivery_not_found"


class WebhookDisabled(Conflict):
    code = "webhook_disabled"


class WebhookUrlRefused(InvalidInput):
    code = "webhook_url_refused"


class UnknownEventType(InvalidInput):
    code = "unknown_event_type"


class TooManyWebhooks(Conflict):
    code = "too_many_webhooks"
