"""The code_interpreter sandbox: backends that run a stateful Python kernel, confined."""
