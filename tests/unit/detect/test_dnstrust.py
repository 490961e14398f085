"""DNS answers teach names and lead to blocks only when they answer an office host's question."""

from __future__ import annotations

from appliance.detect import dnstrust
from appliance.detect.records import DnsAnswer, DnsMessage
from appliance.packet.decode import SIDE_INTERNET, SIDE_OFFICE, SIDE_UNKNOWN
from appliance.packet.flows import DIR_INBOUND, DIR_OUTBOUND, Flow


def flow(direction: int = DIR_OUTBOUND) -> Flow:
    f = Flow.__new__(Flow)
    f.notes = None
    f.direction = direction
    return f


def msg(id_: int, qname: str, response: bool, answers: list[DnsAnswer] | None = None) -> DnsMessage:
    return DnsMessage(id_, response, 0, 0, qname, 1, answers or [])


def test_an_answer_to_the_question_asked_is_believed_once() -> None:
    f = flow()
    assert dnstrust.note_query(f, msg(7, "evil.example", False))
    answer = msg(7, "evil.example", True)
    assert dnstrust.believe_answer(f, answer, False, SIDE_INTERNET)
    assert not dnstrust.believe_answer(f, answer, False, SIDE_INTERNET)  # spent


def test_unsolicited_forged_and_mismatched_answers_are_not_believed() -> None:
    f = flow()
    answer = msg(7, "evil.example", True)
    assert not dnstrust.believe_answer(f, answer, False, SIDE_INTERNET)  # no question
    dnstrust.note_query(f, msg(7, "evil.example", False))
    assert not dnstrust.believe_answer(f, msg(8, "evil.example", True), False, SIDE_INTERNET)
    assert not dnstrust.believe_answer(f, msg(7, "other.example", True), False, SIDE_INTERNET)
    assert not dnstrust.believe_answer(f, answer, True, SIDE_INTERNET)  # from the asker
    assert not dnstrust.believe_answer(f, answer, False, SIDE_OFFICE)  # in on the office port
    assert dnstrust.believe_answer(f, answer, False, SIDE_UNKNOWN)  # replay: no port known


def test_questions_from_outside_are_not_remembered() -> None:
    f = flow(DIR_INBOUND)  # an internet host asking a server in the office
    assert not dnstrust.note_query(f, msg(7, "evil.example", False))
    assert not dnstrust.believe_answer(f, msg(7, "evil.example", True), False, SIDE_OFFICE)


def test_pending_questions_are_bounded() -> None:
    f = flow()
    for i in range(dnstrust.PENDING_PER_FLOW + 5):
        dnstrust.note_query(f, msg(i, "a.example", False))
    assert f.notes is not None and len(f.notes["dns"]["pending"]) == dnstrust.PENDING_PER_FLOW


def test_only_the_question_name_chain_counts() -> None:
    answers = [
        DnsAnswer("cdn.example", 1, 60, "203.0.113.7"),  # before its CNAME: order does not matter
        DnsAnswer("evil.example", 5, 60, "cdn.example"),
        DnsAnswer("bank.example", 1, 60, "203.0.113.20"),  # off the chain: ignored
        DnsAnswer("evil.example", 28, 60, "2001:db8::7"),
    ]
    names, addrs = dnstrust.chain(msg(1, "evil.example", True, answers))
    assert names == {"evil.example", "cdn.example"}
    assert addrs == ["203.0.113.7", "2001:db8::7"]
