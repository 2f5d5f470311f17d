"""The built-in job types; importing this package registers them."""

from scheduler.tasks import maintenance

__all__ = ["maintenance"]
