"""Errors of fastmaml's own that the command line shows as one line (importing this module costs nothing)."""


class OutOfMemory(MemoryError):
    """The device ran out of memory on one task at a time: the workload cannot run there as configured."""
