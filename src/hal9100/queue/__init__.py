"""Dispatch of runs to executors: in-process (embedded) or through Redis (production)."""
