"""The node's database-thread seam, for tests that build its parts by hand."""

from __future__ import annotations

from asgiref.sync import sync_to_async


async def run_db(fn, *args):
    """The relay's ``db`` seam: run ``fn`` in a thread, as the node does."""
    return await sync_to_async(fn, thread_sensitive=False)(*args)
