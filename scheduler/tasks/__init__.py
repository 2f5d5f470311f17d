"""The built-in job types; importing this package registers them."""

from scheduler.tasks import maintenance, sales_report, thumbnail

__all__ = ["maintenance", "sales_report", "thumbnail"]
