"""The built-in job types; importing this package registers them."""

from scheduler.tasks import maintenance, order_followup, sales_report, thumbnail

__all__ = ["maintenance", "order_followup", "sales_report", "thumbnail"]
