"""Acquisition logs for health-insurance appraisal: MPPS procedure steps, records, exports.

A record describes one imaging service line (the accession number, else the requested procedure,
else the study) from what the archive saw: MPPS steps (PS3.4 Annex F), the device's acquisition
times with the attribute each came from, when the archive received the images, the device and the
people, and observed clock facts. It reports facts and orderings only; it never turns a time into
a judgement on the service. Every record carries the configured label explaining that device
times cover machine operation only (appraisal domain notes, consequences 1-3), and every access is
recorded as an event (who, from where, which filter, how many records).

One module per concern: :mod:`.times` (DICOM dates and times), :mod:`.people`, :mod:`.steps`
(MPPS values), :mod:`.lines` (service lines and their facts), :mod:`.rebuild`, :mod:`.records`
(the record builder), :mod:`.clocks` (device clock facts), :mod:`.exports` (CSV, XML, HTML,
cursors), :mod:`.registers` (the administrator's registers) and :mod:`.service` (the facade).
"""

from pacs.services.appraisal.exports import CSV_FIELDS
from pacs.services.appraisal.lines import line_key
from pacs.services.appraisal.service import Appraisal, RecordPage

__all__ = ["CSV_FIELDS", "Appraisal", "RecordPage", "line_key"]
