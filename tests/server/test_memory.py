import sys

import pytest

from mcp_tiered.server import memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_trim_releases_freed_heap_memory_on_glibc() -> None:
    assert memory.trim() is True
