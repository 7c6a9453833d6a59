"""Fake upstream APIs (aiohttp.web servers) for tests, benchmarks and ``make demo``.

Each module is one fake, usable in-process (an async context manager) or as its own process
(``python -m batcher.fakes.<name> --port N …``). Nothing in the runtime imports this package.
"""
