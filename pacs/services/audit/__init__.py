"""The audit trail: recording accesses durably, the hash chain, syslog, and DICOM audit messages.

Every access to patient data lands in the append-only ``events`` table: stores, associations,
MPPS (written by the archive and the appraisal service in their own transactions), C-FIND,
C-MOVE and C-GET (from the DIMSE edge), web requests and logins (from the web edge). Each row says
who (user, calling AE, address), what (kind, outcome, the query keys), and which patients and
studies (PS3.15 A.5, RFC 3881 participant and participant-object fields).

One module per job: :mod:`.service` (:class:`Audit`: the writer thread, spooling, sealing,
shipping, queries, and the event filter of the web and CLI), :mod:`.spool` (where rows wait while
the database is away), :mod:`.syslog` (RFC 5424 messages and the sender), :mod:`.messages` (PS3.15
A.5 audit messages as JSON and XML) and :mod:`.codes` (the audit codes and event outcomes). The
hash chain is SQL over the ``events`` table, so it lives in the index layer,
:mod:`pacs.index.audit_chain`.
"""

from pacs.index.audit_chain import ChainReport
from pacs.index.auth_repo import EventFilter
from pacs.services.audit.service import Audit, event_filter, parse_time
from pacs.services.audit.spool import FileSpool, MemorySpool, Spool
from pacs.services.audit.syslog import SyslogSender

__all__ = [
    "Audit",
    "ChainReport",
    "EventFilter",
    "FileSpool",
    "MemorySpool",
    "Spool",
    "SyslogSender",
    "event_filter",
    "parse_time",
]
