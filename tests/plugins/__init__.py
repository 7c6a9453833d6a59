"""A handler plugin package for tests (registered through a ``batcher.handlers`` entry point)."""
