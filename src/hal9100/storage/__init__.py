"""Object storage for file contents: a local folder (embedded) or S3-compatible (production)."""

from hal9100.storage.base import ObjectStorage

__all__ = ["ObjectStorage"]
