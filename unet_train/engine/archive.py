"""What a checkpoint file must be before ``torch.load`` reads it: bounded, whatever its bytes say.

``torch.load(weights_only=True)`` runs no code, but it trusts a file's sizes and structure. A few
hundred crafted bytes can still take the machine: a zip record declared (or deflated) to 1 GiB is
allocated whole, and a pickle that shares memoised objects (``[x, x]``, then ``[that, that]``, ...)
describes a tree of 2**60 nodes that is hashed or walked node by node. :func:`check_archive` reads
the zip's directory and the pickle's opcodes, never their objects, and refuses such a file first:

- every record is stored (torch writes no compressed ones), and each lies inside the file with the
  size it declares, and together they declare no more than the file holds (entries pointing at one
  record's bytes would each be read again), so ``torch.load`` holds no more than the file's own size;
- the pickle (``data.pkl``) is at most :data:`MAX_PICKLE_BYTES`, and the tree it would build, with
  every shared object counted each time it is referred to, has at most :data:`MAX_NODES` nodes and
  :data:`MAX_DEPTH` levels. Counting runs once over the opcodes and once over the objects they make:
  linear in the file, however much the tree would expand.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path
from typing import cast

# A checkpoint's pickle holds its structure, not its tensors: a few hundred kB for large models.
MAX_PICKLE_BYTES = 64 << 20
# Nodes of the expanded tree (each tensor is ~20): far above any checkpoint unet-train writes.
MAX_NODES = 5_000_000
# Nesting levels: a run config is ~10 deep; deeper structures only serve to exhaust recursion.
MAX_DEPTH = 200
# Opcodes that add to the object below them on the stack rather than making a new one.
_MUTATORS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
_MARK = -1


class ArchiveError(ValueError):
    """The file could expand past its bounds; the message is the reason, for the caller to place."""


class NotAnArchive(ArchiveError):
    """The file is no torch zip archive at all (truncated, corrupted, a plain pickle, text)."""


def check_archive(path: Path) -> None:
    """Refuse ``path`` unless it is a torch zip archive whose records and pickle are bounded (see module doc)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            size = path.stat().st_size
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ArchiveError(
                        f"its record {info.filename} is compressed, which torch.save never writes "
                        "(a small compressed record can expand without bound)"
                    )
                if info.file_size != info.compress_size or info.header_offset + info.compress_size > size:
                    raise ArchiveError(
                        f"its record {info.filename} declares {info.file_size} bytes that the file does not hold"
                    )
            declared = sum(info.file_size for info in infos)
            if declared > size:  # entries that point at one record's bytes: each is read (allocated) again
                raise ArchiveError(
                    f"its records declare {declared} bytes that the file does not hold (records that share their bytes)"
                )
            pickles = [info for info in infos if info.filename.endswith("/data.pkl") or info.filename == "data.pkl"]
            if len(pickles) != 1:
                raise NotAnArchive("it holds no data.pkl record (not written by torch.save)")
            if pickles[0].file_size > MAX_PICKLE_BYTES:
                raise ArchiveError(f"its data.pkl is {pickles[0].file_size} bytes, over {MAX_PICKLE_BYTES}")
            data = archive.read(pickles[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise NotAnArchive(f"not a zip archive written by torch.save ({exc})") from exc
    check_pickle(data)


def check_pickle(data: bytes, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a pickle whose objects, expanded into a tree, exceed ``max_nodes`` nodes or ``max_depth`` levels.

    The opcodes are followed symbolically: each object is a node id with the ids it contains, memo
    entries and ``GET`` share ids, and ``APPEND``/``SETITEM``/``BUILD`` extend the node below them.
    """
    children: list[list[int]] = []
    stack: list[int] = []
    memo: dict[int, int] = {}

    def new(items: list[int]) -> int:
        children.append(items)
        return len(children) - 1

    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[cast(int, arg)] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[cast(int, arg)])
            elif name == "MARK":
                stack.append(_MARK)
            elif name == "DUP":
                stack.append(stack[-1])
            elif name not in ("PROTO", "FRAME", "READONLY_BUFFER"):
                before = [item.name for item in opcode.stack_before]
                popped: list[int] = []
                if "mark" in before:
                    while stack[-1] != _MARK:
                        popped.append(stack.pop())
                    stack.pop()
                    before = before[: before.index("mark")]
                popped += [stack.pop() for _ in before]
                if name in _MUTATORS:
                    children[popped[-1]].extend(popped[:-1])
                    stack.append(popped[-1])
                elif opcode.stack_after:
                    stack.append(new(popped))
    except (IndexError, KeyError, ValueError) as exc:
        raise NotAnArchive(f"its data.pkl is malformed ({type(exc).__name__}: {exc})") from exc
    _check_tree(children, max_nodes, max_depth)


def _check_tree(children: list[list[int]], max_nodes: int, max_depth: int) -> None:
    """Expanded size and depth of every node, children first (iterative: a deep file cannot exhaust recursion)."""
    size = [0] * len(children)
    depth = [0] * len(children)
    state = [0] * len(children)  # 0 unseen, 1 on the current path, 2 done
    for root in range(len(children)):
        if state[root]:
            continue
        pending = [root]
        while pending:
            node = pending[-1]
            if state[node] == 0:
                state[node] = 1
                for child in children[node]:
                    if state[child] == 1:
                        raise ArchiveError("its data.pkl holds a structure that contains itself")
                    if state[child] == 0:
                        pending.append(child)
                continue
            pending.pop()
            if state[node] == 2:
                continue
            state[node] = 2
            size[node] = 1 + sum(size[child] for child in children[node])
            depth[node] = 1 + max((depth[child] for child in children[node]), default=0)
            if size[node] > max_nodes:
                raise ArchiveError(
                    f"its data.pkl shares objects so that they expand to over {max_nodes} nodes "
                    "(a few bytes that would take the memory or the time of the machine)"
                )
            if depth[node] > max_depth:
                raise ArchiveError(f"its data.pkl nests objects over {max_depth} levels deep")
