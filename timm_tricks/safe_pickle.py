"""Reading the CIFAR python files without running what a crafted file asks to run.

The CIFAR-10/100 "python version" files (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images",
2009; www.cs.toronto.edu/~kriz/cifar.html) are pickles of one dict: ``data`` (a NumPy uint8 array), label lists,
file names and a batch label. A plain ``pickle.load`` calls whatever function the file names, so a crafted
``data_batch_1`` runs any command. :func:`load_data_pickle` allows only what that format holds: the built-in
containers and scalars (pickle opcodes, no function call), and NumPy arrays through NumPy's own reconstruction
functions. Any other global is refused before it is looked up.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

# (module, name) of each callable a CIFAR pickle may name: NumPy's array and dtype reconstruction, under its 1.x
# (numpy.core) and 2.x (numpy._core) module names, and bytes as Python 3 writes them at protocol 2.
NUMPY_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
})


class RefusedPickle(pickle.UnpicklingError):
    """The file names a function or class that the CIFAR format never holds."""


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``: only the latin-1 form is taken."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() not in ("latin1", "iso88591"):
        raise RefusedPickle(f"_codecs.encode with {type(text).__name__} and encoding {encoding!r}")
    return text.encode("latin1")


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in NUMPY_GLOBALS:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise RefusedPickle(f"it names {module}.{name}, which a data file never holds")

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("it holds a persistent reference")


def load_data_pickle(f: BinaryIO | bytes, encoding: str = "latin1") -> Any:
    """Unpickle ``f`` (a binary file or bytes) allowing only dicts, lists, tuples, strings, bytes, numbers and
    NumPy arrays; raise :class:`RefusedPickle` for anything else. ``encoding`` reads Python 2 strings (the CIFAR
    files were written by Python 2)."""
    stream = io.BytesIO(f) if isinstance(f, bytes) else f
    return _DataUnpickler(stream, encoding=encoding).load()
