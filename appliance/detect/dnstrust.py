"""Which DNS answers may teach the engine anything (names of addresses, addresses to block).

An answer is believed only when it answers a query an office host sent out: the query went
from the office side to a resolver beyond the bridge, the answer came back on the same flow
from that resolver (inline: in on the uplink port), with the query's transaction id and name.
A forged answer from an office host, an unsolicited answer from the internet or one for
another question teaches nothing. Of a believed answer only the records on the query's own
name chain count (the question, then the CNAMEs it leads to): an extra record for an unrelated
name (cache-poisoning style) is ignored.
"""

from __future__ import annotations

from appliance.detect.records import DnsMessage
from appliance.packet.decode import SIDE_OFFICE
from appliance.packet.flows import DIR_OUTBOUND, Flow

PENDING_PER_FLOW = 16  # outstanding questions remembered per DNS flow
CNAME, A, AAAA = 5, 1, 28


def note_query(flow: Flow, msg: DnsMessage) -> bool:
    """Remember an office host's question on its flow; True if it was one (office → out)."""
    if flow.direction != DIR_OUTBOUND or not msg.qname:
        return False
    pending: list[tuple[int, str]] = flow.note("dns").setdefault("pending", [])
    key = (msg.id, msg.qname)
    if key not in pending:
        pending.append(key)
        if len(pending) > PENDING_PER_FLOW:
            del pending[0]
    return True


def believe_answer(flow: Flow, msg: DnsMessage, from_client: bool, side: int) -> bool:
    """True if `msg` (a response) answers a remembered question on this flow (and spends it)."""
    if from_client or side == SIDE_OFFICE or flow.direction != DIR_OUTBOUND:
        return False
    notes = flow.notes.get("dns") if flow.notes else None
    pending = notes.get("pending") if notes else None
    key = (msg.id, msg.qname)
    if not pending or key not in pending:
        return False
    pending.remove(key)
    return True


def chain(msg: DnsMessage) -> tuple[set[str], list[str]]:
    """The names on the question's chain and the A/AAAA addresses they resolve to, in order."""
    names = {msg.qname}
    grew = True
    while grew:  # CNAMEs may come in any order; follow them until nothing new joins
        grew = False
        for ans in msg.answers:
            if ans.rrtype == CNAME and ans.name.lower() in names and ans.data:
                target = ans.data.lower()
                if target not in names:
                    names.add(target)
                    grew = True
    addresses = [
        a.data for a in msg.answers if a.rrtype in (A, AAAA) and a.data and a.name.lower() in names
    ]
    return names, addresses
