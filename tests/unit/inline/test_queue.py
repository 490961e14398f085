"""The fail-open netlink message, ack parsing, batch bounds and the never-raising callback."""

from __future__ import annotations

import errno
import socket
import struct
import threading

import pytest
from scapy.layers.inet import ICMP, IP, TCP

from appliance.inline.firewall import MARK_BLOCK, MARK_MASK, MARK_PASS
from appliance.inline.queue import (
    NFQA_CFG_F_FAIL_OPEN,
    QueueConfigError,
    QueueStats,
    QueueWorker,
    _BudgetReader,
    ack_status,
    config_message,
    fail_open_message,
    iter_messages,
    queue_table,
    receive_buffer,
    send_config,
)
from appliance.packet.decode import SIDE_INTERNET, SIDE_OFFICE
from appliance.packet.flows import VERDICT_BLOCK, VERDICT_NONE, VERDICT_PASS
from tests.helpers import make_config


def test_fail_open_message_layout() -> None:
    msg = fail_open_message(7, seq=0x57500001)
    # nlmsghdr: length, type (NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_CONFIG), REQUEST|ACK, seq, pid
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq, pid) == (len(msg), 0x0302, 0x5, 0x57500001, 0)
    # nfgenmsg: AF_UNSPEC, NFNETLINK_V0, queue number big-endian
    assert msg[16:20] == bytes([0, 0, 0, 7])
    # NFQA_CFG_MASK then NFQA_CFG_FLAGS, each a 4-byte big-endian value in an 8-byte attribute
    assert msg[20:28] == struct.pack("=HH", 8, 4) + struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)
    assert msg[28:36] == struct.pack("=HH", 8, 5) + struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)
    assert len(msg) == 36


def test_disabling_keeps_the_mask_and_clears_the_flag() -> None:
    msg = fail_open_message(300, seq=1, enable=False)
    assert msg[18:20] == struct.pack("!H", 300)
    assert msg[20:28] == struct.pack("=HH", 8, 4) + struct.pack("!I", 1)
    assert msg[28:36] == struct.pack("=HH", 8, 5) + struct.pack("!I", 0)


def test_config_message_with_queue_length() -> None:
    msg = config_message(1, 2, flags=1, mask=1, maxlen=4096)
    assert msg[20:28] == struct.pack("=HH", 8, 3) + struct.pack("!I", 4096)
    with pytest.raises(ValueError):
        config_message(70000, 1, 1, 1)


def nl_error(seq: int, err: int) -> bytes:
    payload = struct.pack("=i", -err) + struct.pack("=IHHII", 36, 0x0302, 5, seq, 0)
    return struct.pack("=IHHII", 16 + len(payload), 2, 0, seq, 1234) + payload


def test_ack_status_reads_ack_error_and_ignores_other_messages() -> None:
    assert ack_status(nl_error(5, 0), 5) == 0
    assert ack_status(nl_error(5, errno.EPERM), 5) == errno.EPERM
    assert ack_status(nl_error(6, 0), 5) is None  # someone else's answer
    packet_msg = struct.pack("=IHHII", 20, 0x0300, 0, 0, 0) + b"\0" * 4
    assert ack_status(packet_msg, 5) is None
    assert ack_status(packet_msg + nl_error(5, 0), 5) == 0  # several messages in one datagram


@pytest.mark.parametrize(
    "data", [b"", b"\x01\x02", struct.pack("=IHHII", 3, 2, 0, 5, 0), b"\xff" * 40]
)
def test_iter_messages_stops_at_garbage(data: bytes) -> None:
    assert list(iter_messages(data)) == []


def fake_kernel(replies: list[bytes]) -> tuple[socket.socket, threading.Thread]:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

    def answer() -> None:
        kernel.recv(1 << 16)
        for r in replies:
            kernel.send(r)
        kernel.close()

    t = threading.Thread(target=answer)
    t.start()
    return ours, t


def test_send_config_returns_packets_that_arrived_before_the_ack() -> None:
    queued = struct.pack("=IHHII", 24, 0x0300, 0, 0, 0) + b"\x45\0\0\0\0\0\0\0"
    sock, t = fake_kernel([queued, nl_error(9, 0)])
    other = send_config(sock, fail_open_message(0, 9), 9)
    t.join()
    sock.close()
    assert other == [queued]


def test_send_config_raises_the_kernels_error() -> None:
    sock, t = fake_kernel([nl_error(9, errno.EPERM)])
    with pytest.raises(QueueConfigError) as e:
        send_config(sock, fail_open_message(0, 9), 9)
    t.join()
    sock.close()
    assert e.value.errno == errno.EPERM


def test_send_config_times_out_without_an_answer() -> None:
    sock, t = fake_kernel([])
    with pytest.raises(QueueConfigError, match="no answer"):
        send_config(sock, fail_open_message(0, 9), 9, timeout=0.2)
    t.join()
    sock.close()


def test_budget_reader_serves_pending_then_stops_at_the_budget() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for i in range(5):
        b.send(bytes([i]))
    r = _BudgetReader(a, QueueStats())
    r.pending = [b"first"]
    r.budget = 2
    r.deadline = float("inf")
    got = [r.recv(100), r.recv(100), r.recv(100)]
    with pytest.raises(BlockingIOError) as e:
        r.recv(100)
    assert e.value.args[0] == errno.EAGAIN
    assert got == [b"first", b"\x00", b"\x01"]
    r.budget = 10
    r.deadline = 0.0  # the time budget is spent too
    with pytest.raises(BlockingIOError):
        r.recv(100)
    a.close()
    b.close()


def test_receive_buffer_grows_with_queue_length_up_to_a_cap() -> None:
    assert receive_buffer(1024) < receive_buffer(4096) <= 64 << 20
    assert receive_buffer(1 << 20) == 64 << 20


def test_queue_table_parses_proc(tmp_path) -> None:
    p = tmp_path / "nfq"
    p.write_text(
        "    0  18146     3 2  4016    22     1        8  1\n   12  99  0 2 4016 0 0 0 1\n"
    )
    assert queue_table(str(p)) == {
        0: {"portid": 18146, "total": 3, "dropped": 22, "user_dropped": 1, "id_sequence": 8},
        12: {"portid": 99, "total": 0, "dropped": 0, "user_dropped": 0, "id_sequence": 0},
    }
    assert queue_table(str(tmp_path / "missing")) == {}


# -- the callback ---------------------------------------------------------------------------------


class FakeNfPacket:
    def __init__(self, payload: bytes, physindev: int = 0, mark: int = 0) -> None:
        self.payload = payload
        self.physindev = physindev
        self.mark = mark
        self.verdict: str | None = None
        self.new_mark: int | None = None

    def get_payload(self) -> bytes:
        return self.payload

    def set_mark(self, mark: int) -> None:
        self.new_mark = mark

    def accept(self) -> None:
        if self.verdict is not None:
            raise RuntimeError("Verdict already given for this packet")
        self.verdict = "accept"

    def drop(self) -> None:
        self.verdict = "drop"


class FakeEngine:
    def __init__(self, verdict: int = VERDICT_NONE, fail: bool = False) -> None:
        self.verdict = verdict
        self.fail = fail
        self.seen = []

    def process(self, pkt):
        self.seen.append(pkt)
        if self.fail:
            raise ZeroDivisionError("detector bug")
        return self.verdict


PING = bytes(IP(src="198.18.0.11", dst="203.0.113.10") / ICMP())
SYN = bytes(IP(src="198.18.0.11", dst="203.0.113.10") / TCP(dport=443, flags="S"))


def worker(engine: FakeEngine, mode: str = "monitor", delay: float = 0.0) -> QueueWorker:
    cfg = make_config(inline={"mode": mode, "debug_delay_ms": delay})
    w = QueueWorker(cfg, engine, 0)
    w.sides = {3: SIDE_OFFICE, 4: SIDE_INTERNET}
    return w


def test_pass_verdict_goes_into_the_mark_keeping_other_bits() -> None:
    w = worker(FakeEngine(VERDICT_PASS))
    p = FakeNfPacket(SYN, physindev=3, mark=0x11)
    w._callback(p)
    assert p.verdict == "accept"
    assert p.new_mark == 0x11 | MARK_PASS
    assert w.engine.seen[0].side == SIDE_OFFICE
    assert w.stats.passed == 1 and w.stats.received == 1


def test_block_verdict_in_block_mode_marks_blocked() -> None:
    w = worker(FakeEngine(VERDICT_BLOCK), mode="block")
    p = FakeNfPacket(SYN, physindev=4, mark=MARK_PASS)
    w._callback(p)
    # Accepted with the BLOCK mark: the verdict chain saves it and drops the packet.
    assert p.verdict == "accept"
    assert p.new_mark is not None and p.new_mark & MARK_MASK == MARK_BLOCK
    assert w.engine.seen[0].side == SIDE_INTERNET
    assert w.stats.blocked == 1


def test_monitor_mode_never_marks_blocked() -> None:
    w = worker(FakeEngine(VERDICT_BLOCK), mode="monitor")
    p = FakeNfPacket(SYN)
    w._callback(p)
    assert p.verdict == "accept" and p.new_mark is None


def test_no_verdict_leaves_the_mark_alone() -> None:
    w = worker(FakeEngine(VERDICT_NONE))
    p = FakeNfPacket(PING, physindev=99)
    w._callback(p)
    assert p.verdict == "accept" and p.new_mark is None
    assert w.engine.seen[0].side == 0  # unknown port


def test_engine_exception_accepts_and_counts() -> None:
    w = worker(FakeEngine(fail=True))
    p = FakeNfPacket(SYN)
    w._callback(p)
    w._callback(FakeNfPacket(SYN))
    assert p.verdict == "accept"
    assert w.stats.errors == 2


def test_garbage_is_accepted_and_counted_as_malformed() -> None:
    w = worker(FakeEngine())
    for data in (b"", b"\x45\x00", b"\x60" + b"\0" * 10, b"\x00" * 60):
        p = FakeNfPacket(data)
        w._callback(p)
        assert p.verdict == "accept"
    assert w.stats.decode.malformed == 4
    assert w.engine.seen == []


def test_callback_survives_a_packet_that_fails_everywhere() -> None:
    class Broken(FakeNfPacket):
        def get_payload(self) -> bytes:
            raise RuntimeError("payload gone")

        def accept(self) -> None:
            raise RuntimeError("verdict already given")

    w = worker(FakeEngine())
    w._callback(Broken(b""))  # must not raise
    assert w.stats.errors == 1


def test_debug_delay_sleeps_in_the_callback(monkeypatch) -> None:
    slept = []
    monkeypatch.setattr("appliance.inline.queue.time.sleep", slept.append)
    w = worker(FakeEngine(), delay=250)
    w._callback(FakeNfPacket(PING))
    # (time.sleep is patched for the whole process: other tests' threads may sleep meanwhile)
    assert slept.count(0.25) == 1


def test_process_without_a_bound_queue_does_nothing() -> None:
    assert worker(FakeEngine()).process() == 0
