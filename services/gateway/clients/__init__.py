"""What the gateway asks the other services over the bus: a client per service."""

from .history import HistoryClient
from .presence import Admission, PresenceClient

__all__ = ["Admission", "HistoryClient", "PresenceClient"]
