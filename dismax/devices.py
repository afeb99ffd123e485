"""Devices and processes: a 1-axis 'data' mesh over all devices, batch sharding along B, and JAX's
multi-controller runtime (one process per host, ``jax.distributed``) for runs beyond one machine.

The same code runs on one CPU, several GPUs, a TPU slice or several hosts; tests simulate devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set before jax is imported) and hosts with several
local processes on a loopback coordinator.

Multi-process runs: every CLI takes ``--coordinator HOST:PORT --num-processes N --process-id I`` (or
``--coordinator auto`` on a TPU pod slice or in a SLURM job, where JAX detects them) and calls
:func:`initialize_from_args` before anything touches a device. Afterwards ``jax.devices()`` lists every
process's devices, :func:`data_mesh` spans them (grouped by process, so process p owns the contiguous p-th
part of every sharded batch), :func:`global_batch` assembles a global batch from each process's part, and
:func:`process_share` splits work items (structures, sampling chunks) across processes by index. A watchdog
thread turns a crashed or killed peer into one ``error:`` line and exit code 1 within ``heartbeat_timeout``
seconds, instead of a hang. With one process nothing of this is active.
"""

from __future__ import annotations

import argparse
import atexit
import io
import logging
import os
import socket
import sys
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dismax.errors import DismaxError

DATA_AXIS = "data"
#: default seconds to wait for the coordinator and the other processes to come up
INIT_TIMEOUT = 120
#: default seconds without a heartbeat after which a peer process counts as lost
HEARTBEAT_TIMEOUT = 60
#: exit code of a process whose peer was lost (a usage error exits with 2)
PEER_LOST_EXIT_CODE = 1


def data_mesh(devices=None) -> Mesh:
    """A mesh with one axis named 'data' over ``devices`` (default: all of ``jax.devices()``, every
    process's devices, grouped by process so each process's batch part is contiguous)."""
    devices = (sorted(jax.devices(), key=lambda d: (d.process_index, d.id)) if devices is None
               else list(devices))
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Sharding that splits the batch axis ``axis`` (0, or 1 after a leading ensemble-member axis) over the
    'data' axis."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device (parameters, optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(tree, mesh: Mesh, axis: int = 0):
    """Place every array leaf of ``tree`` split along its batch axis ``axis`` over the mesh's devices.

    The batch axis must be divisible by the number of devices. With several processes, ``tree`` is this
    process's part of the global batch (see :func:`global_batch`).
    """
    if process_count() > 1:
        return global_batch(tree, mesh, axis)
    n = mesh.devices.size
    for leaf in jax.tree.leaves(tree):
        size = np.shape(leaf)[axis] if np.ndim(leaf) > axis else 0
        if size == 0 or size % n:
            raise DismaxError(f"batch axis of size {size} cannot be split over {n} devices; "
                              f"use a batch size divisible by {n}")
    return jax.device_put(tree, batch_sharding(mesh, axis))


def global_batch(local_tree, mesh: Mesh, axis: int = 0):
    """Assemble global arrays split along ``axis`` over the mesh from every process's part ``local_tree``
    (process p holds rows [p·B/P, (p+1)·B/P) of the global batch B; all parts have the same shape)."""
    sharding = batch_sharding(mesh, axis)
    n_local = len(mesh.local_devices)
    for leaf in jax.tree.leaves(local_tree):
        size = np.shape(leaf)[axis] if np.ndim(leaf) > axis else 0
        if size == 0 or size % n_local:
            raise DismaxError(f"this process's batch part of size {size} cannot be split over its {n_local} "
                              f"devices; use a batch size divisible by {n_local * process_count()}")
    return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf)),
                        local_tree)


def replicate(tree, mesh: Mesh):
    """Place every leaf of ``tree`` fully on every device of the mesh (with several processes, every process
    passes the same values)."""
    sharding = replicated(mesh)
    if process_count() == 1:
        return jax.device_put(tree, sharding)

    def place(leaf):
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf
        return jax.device_put(np.asarray(to_host(leaf)), sharding)

    return jax.tree.map(place, tree)


def to_host(tree):
    """Every leaf as a NumPy array on this host, also for arrays spread over several processes."""
    def fetch(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if leaf.is_fully_replicated:
                return np.asarray(leaf.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)

    return jax.tree.map(fetch, tree)


# ------------------------------------------------------------------------------------------ processes
def process_index() -> int:
    """This process's index in a multi-process run (0 with one process)."""
    return jax.process_index() if jax.distributed.is_initialized() else 0


def process_count() -> int:
    """The number of processes of the run (1 unless :func:`initialize_distributed` connected several)."""
    return jax.process_count() if jax.distributed.is_initialized() else 1


def is_primary() -> bool:
    """True on process 0, the one that writes logs, metrics, plots and merged outputs."""
    return process_index() == 0


def process_share(n_items: int, index: int | None = None, count: int | None = None) -> range:
    """The indices of ``n_items`` work items (structures, chunks) this process handles: the contiguous block
    [i·n/P, (i+1)·n/P), so concatenating the processes' outputs in process order restores the item order."""
    index = process_index() if index is None else index
    count = process_count() if count is None else count
    return range(index * n_items // count, (index + 1) * n_items // count)


def gather_rows(local, n_rows: int) -> np.ndarray:
    """The ``n_rows`` rows of an array whose rows are split across processes by :func:`process_share`: every
    process passes its share ``local`` and gets all rows in order (the same array with one process)."""
    local = np.asarray(local)
    count = process_count()
    if count == 1:
        return local
    width = -(-n_rows // count)
    padded = np.zeros((width,) + local.shape[1:], local.dtype)
    padded[:len(local)] = local
    # gathered as raw bytes: JAX would turn float64/int64 into 32-bit types (x64 is off by default)
    raw = np.ascontiguousarray(padded).view(np.uint8).reshape(width, -1)
    gathered = np.asarray(multihost_utils.process_allgather(raw, tiled=False))
    rows = [gathered[p, :len(process_share(n_rows, p, count))] for p in range(count)]
    return np.concatenate(rows).view(local.dtype).reshape((n_rows,) + local.shape[1:])


def gather_arrays(local: list) -> list[np.ndarray]:
    """Every process's list of arrays (any shapes and dtypes), concatenated in process order (``local`` itself
    with one process); e.g. per-structure results of each process's :func:`process_share`."""
    if process_count() == 1:
        return [np.asarray(a) for a in local]
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(a) for a in local])
    payload = np.frombuffer(buffer.getvalue(), np.uint8)
    sizes = gather_rows(np.array([len(payload)], np.int64), process_count())
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:len(payload)] = payload
    gathered = np.asarray(multihost_utils.process_allgather(padded, tiled=False))
    arrays = []
    for p, size in enumerate(sizes):
        with np.load(io.BytesIO(gathered[p, :size].tobytes())) as archive:
            arrays += [archive[f"arr_{k}"] for k in range(len(archive.files))]
    return arrays


def barrier(name: str) -> None:
    """Wait until every process reached the barrier ``name`` (no-op with one process)."""
    if process_count() > 1:
        multihost_utils.sync_global_devices(name)


def on_all_processes(flag: bool) -> bool:
    """Process 0's ``flag`` on every process, so all processes take the same branch (e.g. build or not)."""
    if process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def leave_run(code: int) -> int:
    """``code``; in a multi-process run, exit with it right now instead (after flushing the output), skipping
    JAX's exit-time barrier, which waits for the other processes and aborts noisily."""
    if process_count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return code


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """The multi-process options shared by every dismax CLI."""
    group = parser.add_argument_group("multi-process runs (one process per host; see README)")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="address of process 0, where the coordination service listens; 'auto' lets JAX "
                            "detect it on a TPU pod slice or in a SLURM job (default: one process)")
    group.add_argument("--num-processes", type=int, default=None, metavar="N", help="number of processes")
    group.add_argument("--process-id", type=int, default=None, metavar="I", help="this process's index, 0..N-1")
    group.add_argument("--init-timeout", type=int, default=INIT_TIMEOUT, metavar="SECONDS",
                       help=f"give up when the other processes are not connected after this long "
                            f"(default {INIT_TIMEOUT})")
    group.add_argument("--heartbeat-timeout", type=int, default=HEARTBEAT_TIMEOUT, metavar="SECONDS",
                       help="stop with an error when another process has been silent this long "
                            f"(default {HEARTBEAT_TIMEOUT})")


def initialize_from_args(args: argparse.Namespace) -> None:
    """Connect the processes named by :func:`add_distributed_arguments`'s options (nothing without them)."""
    if args.coordinator is None:
        if args.num_processes is not None or args.process_id is not None:
            raise DismaxError("--num-processes and --process-id need --coordinator HOST:PORT")
        return
    initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                           init_timeout=args.init_timeout, heartbeat_timeout=args.heartbeat_timeout)


def initialize_distributed(coordinator: str, num_processes: int | None = None, process_id: int | None = None,
                           init_timeout: int = INIT_TIMEOUT, heartbeat_timeout: int = HEARTBEAT_TIMEOUT) -> None:
    """Start JAX's multi-controller runtime: process ``process_id`` of ``num_processes``, coordinated by
    process 0 at ``coordinator`` ('HOST:PORT', or 'auto' for the cluster JAX detects). Must run before any
    device is used. Every problem that would make JAX abort or wait forever (bad address, port in use,
    coordinator unreachable, id out of range) is raised first as a :class:`DismaxError`."""
    for name, value in (("--init-timeout", init_timeout), ("--heartbeat-timeout", heartbeat_timeout)):
        if value < 1:
            raise DismaxError(f"{name} must be at least 1 second, got {value}")
    if jax.distributed.is_initialized():
        raise DismaxError("the distributed runtime is already initialised in this process")
    # JAX's CPU collectives across processes (the default of recent jaxlib; explicit for older ones)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    options = dict(initialization_timeout=init_timeout, heartbeat_timeout_seconds=2 * heartbeat_timeout + 10,
                   shutdown_timeout_seconds=heartbeat_timeout)
    if coordinator == "auto":
        try:
            jax.distributed.initialize(num_processes=num_processes, process_id=process_id, **options)
        except (ValueError, RuntimeError) as exc:
            raise DismaxError(f"--coordinator auto: JAX found no cluster environment (TPU pod, SLURM, ...) to "
                              f"take the processes from ({str(exc).splitlines()[0]}); pass --coordinator HOST:PORT "
                              f"--num-processes N --process-id I") from None
    else:
        if num_processes is None or process_id is None:
            raise DismaxError("--coordinator needs --num-processes N and --process-id I")
        if num_processes < 1:
            raise DismaxError(f"--num-processes must be at least 1, got {num_processes}")
        if not 0 <= process_id < num_processes:
            raise DismaxError(f"--process-id {process_id} is out of range; with --num-processes {num_processes} "
                              f"it must be 0..{num_processes - 1}")
        host, port = parse_address(coordinator)
        if process_id == 0:
            _check_bindable(host, port)
        else:
            _wait_for_coordinator(host, port, init_timeout)
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id, **options)
    if jax.process_count() > 1:
        _PeerWatchdog(heartbeat_timeout).start()
    if jax.process_index() != 0:  # process 0 reports for the group; the others only warn
        logging.getLogger("dismax").setLevel(logging.WARNING)


def parse_address(address: str) -> tuple[str, int]:
    """'HOST:PORT' (HOST may be '[IPv6]') → (host, port), with a clear error for anything else."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DismaxError(f"--coordinator '{address}' is not HOST:PORT with a port in 1..65535")
    try:
        socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise DismaxError(f"--coordinator '{address}': host '{host}' cannot be resolved ({exc.strerror})") from None
    return host, int(port)


def _check_bindable(host: str, port: int) -> None:
    """Process 0 serves the coordinator: ``host`` must be an address of this machine and ``port`` free."""
    family, *_, address = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise DismaxError(f"process 0 cannot serve the coordinator at {host}:{port}: {exc.strerror} (process 0 "
                              f"must run on that host, and the port must be free)") from None


def _wait_for_coordinator(host: str, port: int, timeout: float) -> None:
    """Wait until process 0's coordinator accepts connections, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise DismaxError(f"no coordinator answers at {host}:{port} after {timeout} s ({exc.strerror or exc}); "
                                  f"start process 0 there, or check --coordinator") from None
            time.sleep(0.5)


class _PeerWatchdog(threading.Thread):
    """Publishes this process's heartbeat in the coordination service's key-value store and stops the process
    with one ``error:`` line when another process has been silent (or gone) for ``timeout`` seconds, so a
    crashed peer never leaves this one waiting in a collective. Stops when this process exits normally."""

    def __init__(self, timeout: float, interval: float = 1.0):
        super().__init__(name="dismax-peer-watchdog", daemon=True)
        from jax._src.distributed import global_state  # the runtime's client; orbax reaches it the same way
        self.client, self.timeout, self.interval = global_state.client, timeout, interval
        self.me, self.count = jax.process_index(), jax.process_count()
        self.stopped = threading.Event()
        atexit.register(self.stop)  # runs before JAX's own shutdown (registered earlier)

    def stop(self) -> None:
        self.stopped.set()
        try:
            self.client.key_value_set(self._key(self.me), "exited", allow_overwrite=True)
        except Exception:  # the coordinator may already be gone; nothing to tell then
            pass

    def _key(self, process: int) -> str:
        return f"dismax/heartbeat/{process}"

    def run(self) -> None:
        started = time.monotonic()
        seen = {p: (None, started) for p in range(self.count) if p != self.me}
        beat, last_contact = 0, started
        while not self.stopped.wait(self.interval):
            now, beat = time.monotonic(), beat + 1
            try:
                self.client.key_value_set(self._key(self.me), str(beat), allow_overwrite=True)
                values = {p: self._try_get(p) for p in seen}
                last_contact = now
            except Exception as exc:  # the coordination service (process 0) does not answer
                if now - last_contact > self.timeout and not self.stopped.is_set():
                    self._fail(f"lost the coordinator (process 0) for {self.timeout} s ({str(exc).splitlines()[0]})")
                continue
            for p, value in values.items():
                if value != seen[p][0] and value != "exited":
                    seen[p] = (value, now)
                elif now - seen[p][1] > self.timeout and not self.stopped.is_set():
                    what = "exited" if value == "exited" else "sent no heartbeat"
                    self._fail(f"process {p} of {self.count} {what} {self.timeout} s ago while this one was still "
                               f"working (it failed, crashed or was killed)")

    def _try_get(self, process: int) -> str | None:
        try:
            return self.client.key_value_try_get(self._key(process))
        except Exception as exc:
            if "NOT_FOUND" in str(exc) or "not found" in str(exc).lower():
                return None
            raise

    def _fail(self, reason: str) -> None:
        print(f"error: process {self.me}: {reason}; stopping. Rerun the same command on every process to resume "
              f"from the last checkpoint", file=sys.stderr, flush=True)
        leave_run(PEER_LOST_EXIT_CODE)
