"""Nothing from a file runs as code, and a search's Ray cluster is closed to the network.

Each payload here would create a file if it ran; the tests assert that the file is never created.
"""

import os
import subprocess
import sys

import psutil
import pytest

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")
CONNECT = """
import sys
from pathlib import Path
import ray
from timm_tricks.config import ConfigError
from timm_tricks.ray_cluster import ray_session
try:
    with ray_session(sys.argv[1], Path(sys.argv[2])):
        print("ran", ray.get(ray.remote(lambda: 6 * 7).remote()))
except ConfigError as e:
    print("refused:", e)
    sys.exit(2)
"""


def _connect(address, storage, token):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_TOKEN=token, TIMM_TRICKS_SHARED_STORAGE="1")
    return subprocess.run([sys.executable, "-c", CONNECT, address, str(storage)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
def test_a_local_ray_cluster_listens_on_loopback_only_and_requires_its_token(tmp_path):
    import ray

    from timm_tricks.ray_cluster import ray_session

    with ray_session(None, tmp_path):
        assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker process is up too
        ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
        listening = {(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in ours}
        names = {psutil.Process(pid).name() for _, _, pid in listening}
        assert {"gcs_server", "raylet"} <= names  # Ray's control servers were found ...
        assert [s for s in listening if s[0] not in LOOPBACK] == []  # ... and none listens beyond loopback
        assert os.environ["RAY_AUTH_MODE"] == "token"
        token, gcs = os.environ["RAY_AUTH_TOKEN"], ray.get_runtime_context().gcs_address
        assert len(token) == 64 and gcs.startswith("127.0.0.1:")
        # another driver with a wrong token is refused in one line; with the cluster's token it runs (--address)
        wrong = _connect(gcs, tmp_path, "0" * 64)
        assert wrong.returncode == 2, wrong.stdout + wrong.stderr[-3000:]
        assert "refused:" in wrong.stdout and "RAY_AUTH_TOKEN" in wrong.stdout and "ran" not in wrong.stdout
        right = _connect(gcs, tmp_path, token)
        assert right.returncode == 0 and "ran 42" in right.stdout, right.stderr[-3000:]
    assert "RAY_AUTH_TOKEN" not in os.environ  # the token is not left behind (nor written to ~/.ray)


class _Payload:
    """Pickles as a call of ``os.system('touch MARKER')``: unpickling it with plain pickle creates the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _payload_bytes(marker, **around):
    import pickle

    return pickle.dumps({"data": _Payload(marker), **around} if around else _Payload(marker), protocol=2)


def test_the_payload_runs_under_plain_pickle(tmp_path):
    """The harmless payload of these tests does what an attacker's would: plain pickle runs it."""
    import pickle

    marker = tmp_path / "ran"
    pickle.loads(_payload_bytes(marker))
    assert marker.exists()


@pytest.mark.parametrize("where", ["data_batch_1", "test_batch"])
def test_a_crafted_cifar_file_is_refused_and_nothing_runs(tmp_path, where):
    import numpy as np

    from timm_tricks.data import DataError, load_cifar

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    good = _Good(np.zeros((2, 3072), np.uint8), [0, 1])
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (base / name).write_bytes(good.dumps())
    marker = tmp_path / "ran"
    (base / where).write_bytes(_payload_bytes(marker, labels=[0, 1]))
    with pytest.raises(DataError, match=f"refused CIFAR file '.*{where}': it names (posix|os|nt)[.]system") as e:
        load_cifar(tmp_path, 10)
    assert "\n" not in str(e.value) and not marker.exists()


class _Good:
    def __init__(self, data, labels):
        self.data, self.labels = data, labels

    def dumps(self, protocol=2):
        import pickle

        return pickle.dumps({"data": self.data, "labels": self.labels, "batch_label": "b", "filenames": ["a", "b"]},
                            protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_the_safe_reader_reads_every_protocol_numpy_writes(protocol):
    import numpy as np

    from timm_tricks.safe_pickle import load_data_pickle

    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    loaded = load_data_pickle(_Good(data, [3, 4]).dumps(protocol))
    assert np.array_equal(loaded["data"], data) and loaded["labels"] == [3, 4] and loaded["filenames"] == ["a", "b"]


@pytest.mark.parametrize("text", [
    b"cbuiltins\neval\n(S'1'\ntR.",  # a call of eval
    b"cnumpy\nload\n(S'x.npy'\ntR.",  # numpy, but not its array reconstruction
    b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.",  # the bytes helper with another codec
])
def test_the_safe_reader_refuses_any_other_global(text):
    from timm_tricks.safe_pickle import RefusedPickle, load_data_pickle

    with pytest.raises(RefusedPickle):
        load_data_pickle(text)


def test_cifar_download_unpacks_the_official_archive_and_reads_it_safely(tmp_path, monkeypatch):
    """``--download`` fetches with torchvision's checked download only; the files are read by the safe reader
    (torchvision's CIFAR10 class, which unpickles with plain pickle, is never built)."""
    import torchvision.datasets.utils as tv_utils

    from timm_tricks.data import DataError, load_cifar

    marker, calls = tmp_path / "ran", []

    def fake_download(url, root, filename=None, md5=None):
        calls.append((url, filename, md5))
        base = tmp_path / "cifar-10-batches-py"
        base.mkdir()
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (base / name).write_bytes(_payload_bytes(marker, labels=[0]))

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    with pytest.raises(DataError, match="refused"):
        load_cifar(tmp_path, 10, download=True)
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                      "c58f30108f718f92721af3b95e74349a")]
    assert not marker.exists()
