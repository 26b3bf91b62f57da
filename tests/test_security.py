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


# ------------------------------------------------------------------------------------------------------------------
# Checkpoints

TINY_RUN = ["model.name=resnet18d_tricks", "data.image_size=16", "data.batch_size=128", "train.epochs=1",
            "ema.enabled=true"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from timm_tricks.config import load_config
    from timm_tricks.train import Trainer

    out = tmp_path_factory.mktemp("security") / "run"
    Trainer(load_config("digits", TINY_RUN), out).fit()
    return out


def _torch_payload(marker):
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"state": _Payload(marker)}, buffer)
    return buffer.getvalue()


def test_a_checkpoint_is_data_only(trained_run):
    """No file of a checkpoint is a pickle (torch's zip or a plain pickle): tensors are safetensors, the rest JSON."""
    import json

    from safetensors import safe_open

    ckpt, = (trained_run / "checkpoints").glob("ckpt-*")
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["COMPLETE", "ema.safetensors", "model.safetensors", "optimizer.safetensors", "summary.csv",
                     "trainer_state.json"]
    for name in names:
        head = (ckpt / name).read_bytes()[:2]
        assert head not in (b"PK", b"\x80\x02", b"\x80\x04", b"\x80\x05"), name  # zip (torch.save) or pickle
        if name.endswith(".safetensors"):
            with safe_open(str(ckpt / name), framework="pt") as f:
                assert len(f.keys()) > 0  # tensors, read without unpickling
                if name == "optimizer.safetensors":  # its structure is JSON in the metadata
                    assert json.loads(f.metadata()["timm_tricks.tree"])["dict"][1][0] == {"value": "param_groups"}
        elif name != "summary.csv":
            json.loads((ckpt / name).read_text())


@pytest.mark.parametrize("kind", ["pickle", "torch"])
def test_each_checkpoint_file_replaced_by_a_payload_is_refused_and_nothing_runs(trained_run, tmp_path, kind):
    import shutil

    from timm_tricks.checkpoint import CheckpointError
    from timm_tricks.config import load_config
    from timm_tricks.train import Trainer

    cfg = load_config("digits", TINY_RUN)
    ckpt_name = next((trained_run / "checkpoints").glob("ckpt-*")).name
    for name in ["model.safetensors", "optimizer.safetensors", "ema.safetensors", "trainer_state.json",
                 "summary.csv"]:
        run, marker = tmp_path / f"{kind}-{name}", tmp_path / f"ran-{kind}-{name}"
        shutil.copytree(trained_run, run)
        payload = _payload_bytes(marker) if kind == "pickle" else _torch_payload(marker)
        (run / "checkpoints" / ckpt_name / name).write_bytes(payload)
        _record_like_an_attacker(run / "checkpoints" / ckpt_name)  # the sizes and hashes match the payload
        with pytest.raises(CheckpointError, match=name.replace(".", "[.]")) as e:
            Trainer(cfg, run, resume=True).fit()
        assert "\n" not in str(e.value) and not marker.exists(), name


def _record_like_an_attacker(ckpt):
    """Rewrite the sizes and hashes of the checkpoint's ``COMPLETE`` marker to match its files, as whoever crafts a
    checkpoint would: the hashes detect damage, not attacks."""
    import json

    from timm_tricks.checkpoint import file_record

    marker = json.loads((ckpt / "COMPLETE").read_text())
    marker["files"] = {name: file_record(ckpt / name) for name in marker["files"]}
    (ckpt / "COMPLETE").write_text(json.dumps(marker))


def test_a_checkpoint_in_the_pickle_layout_is_refused_unread_with_exit_2(trained_run, tmp_path):
    """accelerate's ``save_state`` layout (``optimizer.bin``, ``custom_checkpoint_0.pkl``, ``random_states_0.pkl``,
    loaded with ``weights_only=False`` before) is refused by name; nothing in it runs."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ckpt = next((run / "checkpoints").glob("ckpt-*"))
    markers = []
    for name in ["optimizer.bin", "custom_checkpoint_0.pkl", "random_states_0.pkl"]:
        markers.append(tmp_path / f"ran-{name}")
        (ckpt / name).write_bytes(_torch_payload(markers[-1]))
    proc = subprocess.run([sys.executable, "-m", "timm_tricks", "train", "--recipe", "digits", "--output", str(run),
                           "--resume", *[a for o in TINY_RUN for a in ("--set", o)]],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds pickle files (custom_checkpoint_0.pkl, optimizer.bin, random_states_0.pkl)" \
        in lines[0], proc.stderr
    assert not any(m.exists() for m in markers)


@pytest.mark.parametrize("key", ["distill.checkpoint", "model.pretrained_file"])
def test_weight_files_are_loaded_with_weights_only(tmp_path, key):
    """The teacher's weights and ``pretrained_file`` go through timm's ``weights_only=True`` loading: a pickle
    payload in them is refused in one line and does not run."""
    from timm_tricks.config import ConfigError, load_config
    from timm_tricks.train import Trainer

    marker, weights = tmp_path / "ran", tmp_path / "weights.pth"
    weights.write_bytes(_torch_payload(marker))
    extra = [f"distill.checkpoint={weights}", "distill.teacher=resnet18d_tricks"] if key == "distill.checkpoint" \
        else [f"model.pretrained_file={weights}", "model.pretrained=true"]
    with pytest.raises(ConfigError, match="weights") as e:
        Trainer(load_config("digits", TINY_RUN + extra), tmp_path / "run")
    assert "\n" not in str(e.value) and not marker.exists()
