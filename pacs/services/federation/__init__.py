"""Federated look-up across facilities (issue 18, reuse of imaging between facilities).

One module per job: :mod:`.peers` (how each kind of peer is asked and checked), :mod:`.matching`
(an identifier as a peer keeps it, and the checks that drop another person's studies),
:mod:`.search` (the fan-out with a deadline and the merge), :mod:`.cache` and :mod:`.proxy` (the
WADO-RS proxy and its bounded disk cache), :mod:`.importer` (into the archive with provenance),
:mod:`.prefetch` (the queue worker) and :mod:`.service` (``Federation``, audited). Import
from the modules (the package imports none of them: no import cycle).
"""
