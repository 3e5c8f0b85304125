"""The seccomp filter of every attempt: SIGXFSZ stays fatal.

An attempt's files are capped by ``RLIMIT_FSIZE`` at the disk limit. Writing past it
sends SIGXFSZ, whose default action kills the writer, and the attempt ends ``disk_limit``.
A job that ignored or caught the signal (Python ignores it by default) would only see
``EFBIG``, could delete the file and go on, and end with an error of its own. The filter
refuses (``EPERM``) every call that sets a disposition for SIGXFSZ: ``rt_sigaction``
(and the 32-bit ``sigaction``/``signal``) with that signal and a new action; reading the
current action stays allowed. Everything else is allowed.

:func:`program` builds the classic BPF program bubblewrap loads with ``--seccomp FD``
(``struct sock_filter`` entries, native byte order). Pure; the sandbox writes it to a
memfd for each worker. What it does not cover: a job that *blocks* SIGXFSZ still gets
``EFBIG`` (the write is refused all the same) and the signal waits pending; the work
directory's size checks then decide (a file left at the limit, or the total), as they do
for a job that deletes what it wrote before the next check.
"""

from __future__ import annotations

import errno
import signal
import struct

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_NR, _ARCH, _ARGS = 0, 4, 16

# Each architecture a process here may use, with its calls that set a signal's action.
# x86-64 processes can also make i386 calls (int 0x80) and, where enabled, x32 ones.
_X32 = 0x4000_0000
ARCHES: dict[int, tuple[int, ...]] = {
    0xC000_003E: (13, _X32 | 13, _X32 | 512),  # x86_64: rt_sigaction; x32's
    0x4000_0003: (174, 67, 48),  # i386: rt_sigaction, sigaction, signal
    0xC000_00B7: (134,),  # aarch64: rt_sigaction
    0x4000_0028: (174, 67),  # arm: rt_sigaction, sigaction
}

_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
RET_ALLOW = 0x7FFF_0000
RET_EPERM = 0x0005_0000 | errno.EPERM  # SECCOMP_RET_ERRNO


def _low(arg: int) -> int:
    return _ARGS + 8 * arg


def program(signum: int = signal.SIGXFSZ) -> bytes:
    """The filter: refuse to set an action for ``signum``; allow everything else."""
    code: list[tuple[int, int, int, int]] = []  # (op, jump if true, jump if false, k)
    # Layout: arch dispatch, then one block per arch (load nr, compare each call), then
    # the shared argument check, then the two returns. Jumps are counted forwards.
    blocks = [(arch, calls) for arch, calls in ARCHES.items()]
    block_sizes = [1 + len(calls) + 1 for _, calls in blocks]  # ld nr, jeq each, ret allow
    dispatch = 1 + len(blocks) + 1  # ld arch, jeq each, ret allow
    check = dispatch + sum(block_sizes)  # index of the argument check
    code.append((_LD_ABS, 0, 0, _ARCH))
    start = dispatch
    for i, ((arch, _), size) in enumerate(zip(blocks, block_sizes, strict=True)):
        here = 1 + i
        code.append((_JEQ, start - here - 1, 0, arch))
        start += size
    code.append((_RET, 0, 0, RET_ALLOW))  # an architecture not listed
    for _, calls in blocks:
        code.append((_LD_ABS, 0, 0, _NR))
        for call in calls:
            here = len(code)
            code.append((_JEQ, check - here - 1, 0, call))
        code.append((_RET, 0, 0, RET_ALLOW))
    assert len(code) == check
    allow, deny = check + 6, check + 7
    code += [
        (_LD_ABS, 0, 0, _low(0)),  # the signal
        (_JEQ, 0, allow - (check + 1) - 1, signum),
        (_LD_ABS, 0, 0, _low(1)),  # the new action: NULL only reads the current one
        (_JEQ, 0, deny - (check + 3) - 1, 0),
        (_LD_ABS, 0, 0, _low(1) + 4),
        (_JEQ, allow - (check + 5) - 1, deny - (check + 5) - 1, 0),
        (_RET, 0, 0, RET_ALLOW),
        (_RET, 0, 0, RET_EPERM),
    ]
    return b"".join(struct.pack("=HBBI", op, jt, jf, k) for op, jt, jf, k in code)
