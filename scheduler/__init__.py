"""Scheduler: background jobs handed from actors to Taskiq workers over Redis."""
