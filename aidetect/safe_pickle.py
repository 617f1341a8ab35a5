"""Reading a PyTorch checkpoint (a pickle) without ever running code from it.

The only place aidetect opens a pickle. The file's pickle opcodes are read first with
`pickletools` (which parses, and never builds or imports anything): bytes that are not a pickle
are "not a PyTorch checkpoint", and a pickle that names a callable outside torch (a `__reduce__`
payload) is refused as "may run code" before torch sees it. Then `torch.load(weights_only=True)`
reads it, never anything weaker. Every refusal is one line naming the file.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
import zipfile
from pathlib import Path
from typing import IO, Any

from aidetect.errors import WeightsError, first_line

# Modules whose names a weights-only checkpoint refers to (tensor rebuilders, OrderedDict, the
# bytes codec of protocol 2). A global from any other module is code a full unpickler would run.
_WEIGHTS_MODULES = ("torch", "collections", "_codecs", "numpy")
_MAX_PICKLES = 8  # a legacy (pre-zip) checkpoint is a few pickles, then raw tensor bytes
# What zipfile, pickletools and torch's unpickler raise on damaged bytes (found by flipping
# bytes of real checkpoints): a corrupt file, reported as such in one line.
_CORRUPT_DATA = (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError,
                 struct.error, AssertionError, NotImplementedError, MemoryError,
                 zipfile.BadZipFile)
UNSAFE_MESSAGE = "not a weights-only checkpoint; it may run code when loaded, so aidetect will " \
                 "not open it"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A PyTorch checkpoint's tensors by name, read with `torch.load(weights_only=True)` only.

    Unwraps `{"state_dict": ...}` / `{"model": ...}` and strips DDP's `module.` prefix.
    """
    import torch

    source = Path(path)
    if not source.is_file():
        raise WeightsError(f"{path}: no such file")
    inspect_pickle(source)
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # Never retried with weights_only=False: that would run arbitrary code from the file.
        reason = _torch_reason(error)
        if "GLOBAL" in reason:  # a callable torch does not allow, e.g. from torch itself
            raise WeightsError(f"{path}: {UNSAFE_MESSAGE} ({reason})") from None
        raise WeightsError(f"{path}: refused by torch.load(weights_only=True): it holds more "
                           f"than tensors ({reason})") from None
    except _CORRUPT_DATA as error:
        raise WeightsError(f"{path}: not a PyTorch checkpoint ({first_line(error)})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{path}: not a state dict (a mapping of names to tensors)")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue  # e.g. an epoch number or optimizer settings beside the weights
        if not isinstance(key, str):
            raise WeightsError(f"{path}: tensor key {key!r} is not a name (a state dict maps "
                               "names to tensors)")
        state[key.removeprefix("module.")] = value
    if not state:
        raise WeightsError(f"{path}: holds no tensors")
    return state


def inspect_pickle(path: Path) -> None:
    """Refuse `path` in one line if it is not a pickle (or torch zip of one), or if its pickle
    names a callable outside torch; reads opcodes only, builds nothing."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not names:
                    raise WeightsError(f"{path}: not a PyTorch checkpoint (a zip file without "
                                       "data.pkl)")
                globals_ = _pickle_globals(io.BytesIO(archive.read(names[0])), pickles=1)
        else:
            with open(path, "rb") as handle:
                globals_ = _pickle_globals(handle, pickles=_MAX_PICKLES)
    except _CORRUPT_DATA as error:
        raise WeightsError(f"{path}: not a PyTorch checkpoint (not a pickle: "
                           f"{first_line(error)})") from None
    unsafe = [g for g in globals_ if g.split(".", 1)[0] not in _WEIGHTS_MODULES]
    if unsafe:
        raise WeightsError(f"{path}: {UNSAFE_MESSAGE} (it calls {unsafe[0]})")


def _pickle_globals(stream: IO[bytes], *, pickles: int) -> list[str]:
    """The `module.name` of every global the pickles in `stream` refer to.

    Legacy checkpoints are several pickles in a row followed by raw bytes: once at least one
    pickle has parsed, bytes that do not parse end the reading instead of failing it.
    """
    found: list[str] = []
    for index in range(pickles):
        start = stream.tell()
        if not stream.read(1):
            break
        stream.seek(start)
        try:
            found.extend(_one_pickle_globals(stream))
        except (ValueError, EOFError):
            if index == 0:
                raise
            break
    return found


def _one_pickle_globals(stream: IO[bytes]) -> list[str]:
    # pickletools.dis checks the memo and the stack as well as the opcodes; genops then lists
    # the globals. Neither imports or calls anything.
    start = stream.tell()
    pickletools.dis(stream, out=io.StringIO())
    end = stream.tell()
    stream.seek(start)
    found, strings = [], []
    for opcode, arg, _ in pickletools.genops(stream):
        if opcode.name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
        elif opcode.name == "STACK_GLOBAL":
            found.append("?")  # module and name not pushed as strings: not torch's writer
        elif isinstance(arg, str) and ("UNICODE" in opcode.name or "STRING" in opcode.name):
            strings.append(str(arg))
    stream.seek(end)
    return found


def _torch_reason(error: BaseException) -> str:
    """The line of torch's weights-only refusal that names the cause, not its advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("Unsupported", "Trying to load")):
            return line if len(line) <= 160 else line[:157] + "..."
    return "not tensors only"
