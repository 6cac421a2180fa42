"""keep_freed_memory: glibc keeps a freed 64 MiB tensor in its heap for reuse instead of handing it back to the kernel
(which makes the next pass page-fault it in again)."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import ctypes, sys
    import torch
    from immunofold.allocator import keep_freed_memory

    class MallInfo2(ctypes.Structure):  # glibc >= 2.33
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    maps = torch.empty(16 << 20).fill_(1.0)  # 64 MiB
    del maps
    print(libc.mallinfo2().fordblks)  # bytes free inside the heap, ready for reuse
""")


def free_heap_bytes(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings")
def test_a_freed_large_tensor_stays_in_the_heap():
    assert free_heap_bytes("default") < 16 << 20  # glibc's default: the block went back to the kernel
    assert free_heap_bytes("keep") >= 64 << 20
