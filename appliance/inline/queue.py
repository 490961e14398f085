"""NFQUEUE workers: take queued flow heads from the kernel, judge them, give verdicts.

The rule of this module: office traffic never waits on Python. The queue fails open (a full
queue or a full socket buffer lets packets through uninspected instead of dropping them), the
callback never raises (any exception accepts the packet and is counted), and the loop around it
never blocks for long (bounded batches), so ticks, signals and the systemd watchdog keep running.

netfilterqueue cannot set NFQA_CFG_F_FAIL_OPEN, so we send the NFQNL_MSG_CONFIG message
ourselves, on the binding's own netlink socket: the kernel accepts queue configuration only from
the socket (port id) that bound the queue, and answers with an ack or an error we check.

With ``inline.workers`` > 1 each queue of the ``--queue-balance`` range gets its own process
(`WorkerProcess`) with its own engine; the kernel hashes both directions of a host pair to the
same queue, so flows stay whole. Alerts and block requests go to the main process over a pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from appliance.config import Config
from appliance.inline.contract import EngineFactory, PacketEngine, WorkerEngine
from appliance.inline.firewall import MARK_BLOCK, MARK_DEEP, MARK_MASK, MARK_PASS
from appliance.packet.decode import SIDE_INTERNET, SIDE_OFFICE, SIDE_UNKNOWN, DecodeStats, decode_ip
from appliance.packet.flows import VERDICT_BLOCK, VERDICT_DEEP, VERDICT_PASS

log = logging.getLogger(__name__)

# -- netlink: NFQNL_MSG_CONFIG with NFQA_CFG_F_FAIL_OPEN -----------------------------------------

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NFNETLINK_V0 = 0
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 0x1

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host byte order)
_NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (big endian)
_NLATTR = struct.Struct("=HH")  # len, type
_I32 = struct.Struct("=i")

# Our config messages use sequence numbers far from libnfnetlink's (which counts from time()).
SEQ_BASE = 0x57500000


def _attr_u32(kind: int, value: int) -> bytes:
    return _NLATTR.pack(8, kind) + struct.pack("!I", value)


def config_message(
    queue_num: int, seq: int, flags: int, mask: int, maxlen: int | None = None
) -> bytes:
    """An NFQNL_MSG_CONFIG request (asking for an ack) that sets `flags` under `mask`."""
    if not 0 <= queue_num <= 0xFFFF:
        raise ValueError(f"queue number out of range: {queue_num}")
    body = _NFGENMSG.pack(socket.AF_UNSPEC, NFNETLINK_V0, queue_num)
    if maxlen is not None:
        body += _attr_u32(NFQA_CFG_QUEUE_MAXLEN, maxlen)
    body += _attr_u32(NFQA_CFG_MASK, mask) + _attr_u32(NFQA_CFG_FLAGS, flags)
    kind = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
    return (
        _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body
    )


def fail_open_message(queue_num: int, seq: int, enable: bool = True) -> bytes:
    return config_message(
        queue_num, seq, NFQA_CFG_F_FAIL_OPEN if enable else 0, NFQA_CFG_F_FAIL_OPEN
    )


def iter_messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, payload) of each netlink message in a datagram; stops at a malformed one."""
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            return
        yield kind, seq, data[off + _NLMSGHDR.size : off + length]
        off += (length + 3) & ~3


def ack_status(data: bytes, seq: int) -> int | None:
    """The kernel's answer to our request `seq` in a datagram: 0 = ok, > 0 = errno, None = the
    datagram holds no answer to it (a queued packet, say)."""
    for kind, msg_seq, payload in iter_messages(data):
        if kind == NLMSG_ERROR and msg_seq == seq and len(payload) >= _I32.size:
            return -_I32.unpack_from(payload)[0]
    return None


class QueueConfigError(OSError):
    """The kernel refused a queue configuration message."""


def send_config(sock: socket.socket, message: bytes, seq: int, timeout: float = 2.0) -> list[bytes]:
    """Send a config message on the queue's socket and wait for the kernel's ack.

    Queued packets may arrive on the same socket meanwhile; they are returned (raw datagrams)
    for the caller to hand to the binding, so none is left without a verdict.
    """
    other: list[bytes] = []
    sock.send(message)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise QueueConfigError(errno.ETIMEDOUT, "no answer from the kernel to queue config")
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            continue
        try:
            data = sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                continue
            raise
        status = ack_status(data, seq)
        if status is None:
            other.append(data)
        elif status == 0:
            return other
        else:
            raise QueueConfigError(status, f"queue config refused: {os.strerror(status)}")


# -- one queue ----------------------------------------------------------------------------------


@dataclass
class QueueStats:
    received: int = 0
    passed: int = 0  # verdict PASS saved into the connection
    blocked: int = 0  # verdict BLOCK
    errors: int = 0  # callback exceptions (packet accepted)
    overruns: int = 0  # ENOBUFS: the socket buffer overflowed (fail-open let packets by)
    decode: DecodeStats = field(default_factory=DecodeStats)

    def as_dict(self) -> dict[str, int]:
        return {
            "received": self.received,
            "passed": self.passed,
            "blocked": self.blocked,
            "callback_errors": self.errors,
            "overruns": self.overruns,
            "decoded": self.decode.ok,
            "malformed": self.decode.malformed,
        }


class _BudgetReader:
    """What `NetfilterQueue.run_socket` reads from: the socket, but only a bounded batch.

    run_socket loops until recv raises EAGAIN; under a flood that would be forever, so after
    `budget` packets or `deadline` we pretend the socket is empty. Datagrams that arrived while
    waiting for a config ack are served first.
    """

    __slots__ = ("budget", "deadline", "pending", "sock", "stats")

    def __init__(self, sock: socket.socket, stats: QueueStats) -> None:
        self.sock = sock
        self.stats = stats
        self.pending: list[bytes] = []
        self.budget = 0
        self.deadline = 0.0

    def recv(self, size: int) -> bytes:
        if self.pending:
            return self.pending.pop(0)
        if self.budget <= 0 or time.monotonic() >= self.deadline:
            raise BlockingIOError(errno.EAGAIN, "batch done")
        self.budget -= 1
        try:
            return self.sock.recv(size, socket.MSG_DONTWAIT)
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                self.stats.overruns += 1
            raise


class QueueWorker:
    """One bound NFQUEUE: decode → engine → verdict (with the verdict in the packet mark)."""

    def __init__(self, config: Config, engine: PacketEngine, queue_num: int) -> None:
        self.config = config
        self.engine = engine
        self.queue_num = queue_num
        self.stats = QueueStats()
        self.sides: dict[int, int] = {}
        self.block_mode = config.inline.mode == "block"
        self.delay = config.inline.debug_delay_ms / 1000.0
        self._nfq: Any = None
        self._sock: socket.socket | None = None
        self._reader: _BudgetReader | None = None
        self._seq = SEQ_BASE + queue_num * 1000

    # -- life cycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Bind the queue, make it fail open, size its buffers. Raises OSError with a reason."""
        from netfilterqueue import NetfilterQueue

        self.sides = port_sides(self.config)
        maxlen = self.config.inline.queue_maxlen
        nfq = NetfilterQueue()
        try:
            nfq.bind(
                self.queue_num,
                self._callback,
                max_len=maxlen,
                sock_len=receive_buffer(maxlen),
            )
        except OSError as e:
            raise OSError(
                e.errno or errno.EBUSY,
                f"cannot bind NFQUEUE {self.queue_num} ({e}); is another watchpost running?",
            ) from None
        self._nfq = nfq
        # A second socket object on the same netlink socket (same port id): the kernel only takes
        # configuration from the socket that bound the queue.
        self._sock = socket.socket(fileno=os.dup(nfq.get_fd()))
        self._reader = _BudgetReader(self._sock, self.stats)
        try:
            self.set_fail_open(True)
        except OSError:
            self.close()
            raise

    def set_fail_open(self, enable: bool) -> None:
        assert self._sock is not None and self._reader is not None
        self._seq += 1
        msg = fail_open_message(self.queue_num, self._seq, enable)
        self._reader.pending += send_config(self._sock, msg, self._seq)

    def configure(self, config: Config) -> None:
        """Live changes that need no rebind: mode, the test delay, port names."""
        self.config = config
        self.block_mode = config.inline.mode == "block"
        self.delay = config.inline.debug_delay_ms / 1000.0
        self.sides = port_sides(config)

    def fileno(self) -> int:
        assert self._nfq is not None
        return self._nfq.get_fd()

    def process(self, max_packets: int = 512, max_seconds: float = 0.2) -> int:
        """Handle what is waiting, at most `max_packets` or `max_seconds`; returns the count."""
        if self._nfq is None or self._reader is None:
            return 0
        before = self.stats.received
        self._reader.budget = max_packets
        self._reader.deadline = time.monotonic() + max_seconds
        self._nfq.run_socket(self._reader)
        return self.stats.received - before

    def close(self) -> None:
        if self._nfq is not None:
            try:
                self._nfq.unbind()
            except Exception:
                log.debug("unbind of queue %d failed", self.queue_num, exc_info=True)
        if self._sock is not None:
            self._sock.close()
        self._nfq = None
        self._sock = None
        self._reader = None

    # -- the callback ---------------------------------------------------------------------------

    def _callback(self, nfpkt: Any) -> None:
        """Never raises: whatever goes wrong, the packet is accepted and the error counted."""
        stats = self.stats
        stats.received += 1
        try:
            if self.delay:
                time.sleep(self.delay)
            pkt = decode_ip(nfpkt.get_payload(), time.time(), stats.decode)
            if pkt is None:
                nfpkt.accept()
                return
            pkt.side = self.sides.get(nfpkt.physindev, SIDE_UNKNOWN)
            verdict = self.engine.process(pkt)
            if verdict == VERDICT_PASS:
                stats.passed += 1
                nfpkt.set_mark((nfpkt.mark & ~MARK_MASK) | MARK_PASS)
            elif verdict == VERDICT_BLOCK and self.block_mode:
                # Accepted with the BLOCK mark: the ruleset's verdict chain saves it into the
                # connection and drops the packet (see firewall.py).
                stats.blocked += 1
                nfpkt.set_mark((nfpkt.mark & ~MARK_MASK) | MARK_BLOCK)
            elif verdict == VERDICT_DEEP:  # keep queueing past the head (firewall.py)
                nfpkt.set_mark((nfpkt.mark & ~MARK_MASK) | MARK_DEEP)
            nfpkt.accept()
        except Exception:
            stats.errors += 1
            if stats.errors == 1:
                log.exception("queue callback failed (packet accepted; later failures counted)")
            with contextlib.suppress(Exception):  # a verdict was already given
                nfpkt.accept()


def receive_buffer(maxlen: int) -> int:
    """Socket receive buffer for `maxlen` queued packets of up to the copy range (capped)."""
    return min(maxlen * 4800, 64 << 20)


def port_sides(config: Config) -> dict[int, int]:
    """ifindex of the office and uplink ports → which side a packet came from."""
    out = {}
    for name, side in ((config.inline.office, SIDE_OFFICE), (config.inline.uplink, SIDE_INTERNET)):
        try:
            out[socket.if_nametoindex(name)] = side
        except OSError:
            raise OSError(errno.ENODEV, f"no network interface {name!r}") from None
    return out


def queue_table(path: str = "/proc/net/netfilter/nfnetlink_queue") -> dict[int, dict[str, int]]:
    """The kernel's view of bound queues: number → portid, depth (total), dropped counts."""
    out: dict[int, dict[str, int]] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        w = line.split()
        if len(w) < 8 or not w[0].isdigit():
            continue
        out[int(w[0])] = {
            "portid": int(w[1]),
            "total": int(w[2]),
            "dropped": int(w[5]),
            "user_dropped": int(w[6]),
            "id_sequence": int(w[7]),
        }
    return out


# -- worker processes (inline.workers > 1) -------------------------------------------------------


class _PipeBlocker:
    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn

    def block(self, addr: str, ttl: int) -> None:
        self.conn.send(("block", addr, ttl))


def _die_with_parent() -> None:
    """Ask the kernel to kill us if the main process dies (so a restart can rebind the queue)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_main(
    config: Config,
    queue_num: int,
    conn: multiprocessing.connection.Connection,
    intel_paths: list[str],
    engine_factory: EngineFactory,
) -> None:
    """Entry point of a worker process: one queue, its own engine; talks to the main process."""
    _die_with_parent()
    parent = os.getppid()
    stop = False

    def on_term(_sig: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        engine = engine_factory(
            config, intel_paths, lambda alert: conn.send(("alert", alert)), _PipeBlocker(conn)
        )
        worker = QueueWorker(config, engine, queue_num)
        worker.open()
    except Exception as e:
        conn.send(("error", f"queue {queue_num}: {e}"))
        return
    conn.send(("ready", queue_num))
    next_stats = 0.0
    try:
        while not stop and os.getppid() == parent:
            waitables: list[Any] = [worker, conn]
            ready, _, _ = select.select(waitables, [], [], 0.5)
            if worker in ready:
                worker.process()
            while conn.poll():
                msg = conn.recv()
                if msg[0] == "stop":
                    stop = True
                elif msg[0] == "configure":
                    config = msg[1]
                    engine.configure(config)
                    worker.configure(config)
                    engine.reset_flows()
                elif msg[0] == "intel":
                    engine.load_intel(msg[1])
                    engine.reset_flows()
            now = time.time()
            if now >= next_stats:
                next_stats = now + 1.0
                engine.tick(now)
                conn.send(("stats", worker_stats(worker, engine)))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the main process went away
    finally:
        worker.close()


def worker_stats(worker: QueueWorker, engine: WorkerEngine) -> dict[str, int]:
    out = worker.stats.as_dict()
    out.update(engine.counters())
    return out


class WorkerProcess:
    """The main process's handle on one worker process."""

    def __init__(
        self,
        config: Config,
        queue_num: int,
        intel_paths: list[str],
        engine_factory: EngineFactory,
    ) -> None:
        self.queue_num = queue_num
        self.config = config
        self.intel_paths = list(intel_paths)
        self.engine_factory = engine_factory
        self.stats: dict[str, int] = {}
        self.started_at = 0.0  # time.monotonic() of the last start
        self.last_heard = 0.0  # ... and of the last message from the worker
        self._ctx = multiprocessing.get_context("spawn")
        self.conn: multiprocessing.connection.Connection | None = None
        self.proc: Any = None

    def start(self) -> None:
        parent, child = self._ctx.Pipe()
        self.proc = self._ctx.Process(
            target=worker_main,
            args=(self.config, self.queue_num, child, self.intel_paths, self.engine_factory),
            name=f"watchpost-q{self.queue_num}",
            daemon=True,
        )
        self.proc.start()
        child.close()
        self.started_at = self.last_heard = time.monotonic()
        self.conn = parent

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the worker has bound its queue; raises OSError with its reason."""
        assert self.conn is not None
        if not self.conn.poll(timeout):
            raise OSError(errno.ETIMEDOUT, f"queue {self.queue_num}: worker did not start")
        try:
            msg = self.conn.recv()
        except EOFError:
            raise OSError(errno.EIO, f"queue {self.queue_num}: worker died at start") from None
        if msg[0] == "error":
            raise OSError(errno.EIO, msg[1])

    def fileno(self) -> int:
        assert self.conn is not None
        return self.conn.fileno()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def send(self, *msg: Any) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.send(msg)

    def drain(self, on_alert: Callable[[Any], None], blocker: Any) -> None:
        """Take everything the worker has sent: alerts, block requests, stats."""
        if self.conn is None:
            return
        try:
            while self.conn.poll():
                msg = self.conn.recv()
                self.last_heard = time.monotonic()
                kind = msg[0]
                if kind == "alert":
                    on_alert(msg[1])
                elif kind == "block":
                    blocker.block(msg[1], msg[2])
                elif kind == "stats":
                    self.stats = msg[1]
        except (EOFError, OSError):
            self.conn.close()
            self.conn = None

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        self.send("stop")
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(1.0)
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.proc = None
