from __future__ import annotations

from hal9100.core.repository import Repository
from hal9100.db.models import Assistant


class AssistantRepository(Repository[Assistant]):
    model = Assistant
    noun = "assistant"
