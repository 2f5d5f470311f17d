"""Actors: the domain logic, one actor per domain, each owning its pools.

`runtime` is the small actor core (mailbox, ask/tell, deadlines, supervision); `system` starts
and stops actors in dependency order; the other modules are the domains.
"""

from actors.runtime import Actor, ActorRef, Message, deadline_scope, handler
from actors.system import ActorKey, ActorSystem

__all__ = ["Actor", "ActorKey", "ActorRef", "ActorSystem", "Message", "deadline_scope", "handler"]
