"""HAL-9100: the OpenAI Assistants API on any LLM."""

__version__ = "0.1.0"
