"""Starting a Ray cluster on this machine, or joining one, without opening it to the network.

A cluster that ``tune`` or ``ablate`` starts here listens on the loopback interface only and requires Ray's token
authentication (Ray's "Token authentication" guide, docs.ray.io/en/latest/ray-security/token-auth.html): any
process that can reach a Ray port can otherwise submit a task that runs as the user.

- **Loopback.** Ray's servers (GCS, raylet, core workers, agents) bind to 127.0.0.1 when the node's IP address is
  127.0.0.1, and to every interface otherwise. ``ray.init(_node_ip_address="127.0.0.1")`` alone does not keep it:
  Ray 2.60 replaces a loopback address by the machine's routable one (``ray._private.services
  .resolve_ip_for_localhost``, called by ``ray.init`` and when resolving a bootstrap address). :func:`ray_session`
  keeps loopback addresses as given while Ray starts. A test lists the listening sockets to check it.
- **Token.** A new random token per session, handed to Ray's processes through ``RAY_AUTH_TOKEN`` in the
  environment (never written to disk), with ``RAY_AUTH_MODE=token``.
- **Joining** (``--address``): the user's own token is used, as Ray finds it: ``RAY_AUTH_TOKEN``,
  ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (see docs/tuning.md). A refused token is one line, exit 2.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError

LOOPBACK = "127.0.0.1"
QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
}
NETWORK_FILE_SYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
                        "fuse.glusterfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.sshfs", "9p", "virtiofs",
                        "fuse.weka", "wekafs", "panfs", "orangefs")


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, and put the previous values back after it."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    _reload_auth()
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_auth()


def _reload_auth() -> None:
    """Make this process's Ray read ``RAY_AUTH_MODE`` and the token again: Ray reads both once and caches them
    (as Ray's own ``authentication_token_setup._enable_token_auth`` does it after setting the mode)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def _loopback_kept() -> Iterator[None]:
    """While Ray starts or connects, keep a loopback node or bootstrap address as given (see the module notes)."""
    from ray._private import services

    resolve = services.resolve_ip_for_localhost
    services.resolve_ip_for_localhost = lambda host: host
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = resolve


def _connect(address: str | None) -> None:
    import ray
    from ray.exceptions import AuthenticationError

    try:
        with _loopback_kept():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(address="local", include_dashboard=False, log_to_driver=False, _node_ip_address=LOOPBACK)
    except (AuthenticationError, ConnectionError) as e:
        chain: list[BaseException] = [e]
        while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
            chain.append(chain[-1].__cause__ or chain[-1].__context__)
        # Ray 2.60 wraps the AuthenticationError of its GCS client into the text of a RuntimeError
        refused = any(isinstance(x, AuthenticationError) or "InvalidAuthToken" in str(x) for x in chain)
        if not address or not refused:
            raise
        raise ConfigError(f"the Ray cluster at {address!r} refused this driver's authentication token: set "
                          "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token, see docs/tuning.md "
                          "'Security'") from None


@contextlib.contextmanager
def ray_session(address: str | None, storage: Path) -> Iterator[None]:
    """Start Ray on this machine (``address`` None: loopback only, a fresh token) or join a cluster, and shut it
    down afterwards.

    On a cluster, ``storage`` must be seen by every node. When it is on a local file system of this machine (by
    the mount table) a ConfigError says so if the cluster has more than one node, and a warning if it has one
    node so far (an autoscaling cluster adds its workers later). ``TIMM_TRICKS_SHARED_STORAGE=1`` vouches for a
    file system the mount table does not show as shared.
    """
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    auth = _join_auth() if address else {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    import ray

    with _environment(auth):
        _connect(address)
        try:
            _check_storage(address, storage)
            yield
        finally:
            ray.shutdown()


def _join_auth() -> dict[str, str]:
    """Token mode for joining a cluster when the user has a token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``) and has not set ``RAY_AUTH_MODE``: Ray itself turns it on only for a cluster it starts."""
    has_token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or \
        (Path.home() / ".ray" / "auth_token").is_file()
    return {"RAY_AUTH_MODE": "token"} if has_token and "RAY_AUTH_MODE" not in os.environ else {}


def _check_storage(address: str | None, storage: Path) -> None:
    import ray

    vouched = os.environ.get("TIMM_TRICKS_SHARED_STORAGE") == "1"
    if not address or vouched or is_shared_storage(storage):
        return
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    where = (f"--storage {str(storage.parent)!r} is on a local disk of this machine (not a network file system by "
             "/proc/mounts)")
    if nodes > 1:
        raise ConfigError(f"{where}, but the Ray cluster has {nodes} nodes: give a folder every node mounts (NFS, "
                          "EFS, a cluster file system), or set TIMM_TRICKS_SHARED_STORAGE=1 if it is shared after all")
    print(f"timm-tricks: warning: {where}; trials on nodes that join later will not see it", file=sys.stderr)


def is_shared_storage(path: Path, mounts: str = "/proc/mounts") -> bool:
    """Whether ``path`` lies on a network or cluster file system, from the mount table (``/proc/mounts``)."""
    try:
        table = [line.split()[1:3] for line in Path(mounts).read_text().splitlines() if len(line.split()) > 2]
    except OSError:
        return True  # no mount table to read (not Linux): give the user the benefit of the doubt
    path = Path(path).resolve()
    best, kind = "", ""
    for point, fs_type in table:
        point = point.replace("\\040", " ")
        if (path == Path(point) or Path(point) in path.parents) and len(point) > len(best):
            best, kind = point, fs_type
    return kind in NETWORK_FILE_SYSTEMS
