"""The order follow-up: the confirmation for a newly placed order.

Enqueued by the order's own statement (`storage.orders.PLACE` writes the job row through the
transactional outbox), so an order and its follow-up commit together or not at all; the relay
dispatches it once committed. Idempotent: a second run finds the notice already written.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from scheduler.context import JobContext
from scheduler.registry import PermanentFailure, job_type
from server.routing import Input
from storage import notices

# The currencies whose minor unit is the unit itself (ISO 4217 exponent 0).
WHOLE_UNITS = frozenset({"BIF", "CLP", "ISK", "JPY", "KRW", "PYG", "RWF", "UGX", "VND", "XAF"})


class FollowUp(Input):
    order_id: int = Field(ge=1)


def money(minor: int, currency: str) -> str:
    if currency in WHOLE_UNITS:
        return f"{minor} {currency}"
    return f"{minor // 100}.{minor % 100:02d} {currency}"


@job_type("order_followup", topic="orders", params=FollowUp, max_attempts=5)
async def order_followup(ctx: JobContext, params: FollowUp) -> dict[str, Any]:
    async with ctx.resources.db.primary() as conn:
        order = await notices.order_summary(conn, params.order_id)
        if order is None:
            raise PermanentFailure(f"order {params.order_id} does not exist")
        lines = [
            f"{item['quantity']} x {item['name']} ({item['sku']}) at "
            f"{money(item['unit_price_minor'], order['currency'])}"
            for item in order["items"]
        ]
        subject = f"Your order #{order['id']}"
        body = "\n".join(
            [
                "Thank you for your order.",
                "",
                *lines,
                "",
                f"Total: {money(order['total_minor'], order['currency'])}",
            ]
        )
        written = await notices.record(
            conn, order["id"], order["user_id"], "confirmation", subject, body
        )
    return {"order_id": order["id"], "notice": "confirmation", "written": written}
