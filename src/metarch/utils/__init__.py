"""Small helpers shared across domains (atomic files, hashing)."""

from metarch.utils.io import atomic_write, atomic_write_bytes, atomic_write_text, sha256_file

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "sha256_file"]
