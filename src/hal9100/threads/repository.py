from __future__ import annotations

from hal9100.core.repository import Repository
from hal9100.db.models import Thread


class ThreadRepository(Repository[Thread]):
    model = Thread
    noun = "thread"
