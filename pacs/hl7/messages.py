"""HL7 v2 messages of IHE Radiology Scheduled Workflow in, their acknowledgements out.

:func:`parse` turns the bytes of one message (MLLP frame removed) into the plain types of
:mod:`pacs.services.orders.model`; :func:`ack` builds the original-mode acknowledgement. Segments,
fields, repetitions, components and subcomponents are split by python-hl7 (``hl7.parse``: plain
splitting on the message's separators, no validation against the HL7 tables, as real HIS
messages carry Z segments, empty required fields and extra components); segment names are
checked against the version's segment list, Z segments allowed. This module only picks
positions out and turns HL7 values into DICOM ones.

Messages understood (HL7 v2.3, 2.3.1, 2.4, 2.5, 2.5.1, 2.6; one order per message, as IHE RAD
TF-2 sends them):

======================  =====================================================================
ORM^O01 (RAD-4/RAD-13,  order; one scheduled step from OBR
v2.3.1 IHE shape)
OMI^O23 (v2.5)          order; one scheduled step per IPC segment
ADT^A08, ADT^A31        :class:`PatientUpdate` (PID)
ADT^A40                 :class:`PatientMerge` (PID = surviving, MRG-1 = prior)
ORU^R01                 :class:`Report` (OBR, OBX)
======================  =====================================================================

Field positions (checked against IHE RAD TF-2 4.4/4.13 as dcm4chee-arc's HL7 conformance
statement tabulates them, and HL7 v2.5.1 chapter 4 for IPC):

* MSH-3/4 sending application/facility (the :class:`MessageId` sender ``MSH-3.1^MSH-4.1``),
  MSH-9 type^trigger, MSH-10 control ID, MSH-11 processing ID, MSH-12 version, MSH-18 charset.
* PID-3 (repeating CX): the first repetition typed ``MR`` or ``PI`` (PID-3.5), else the first,
  is Patient ID with PID-3.4.1 (else 3.4.2) as issuer; every other repetition is an
  :class:`OtherId` with its own issuer, PID-3.4.2/3.4.3 universal ID and its type, and PID-3.5
  type code (the Patient ID keeps its own in ``id_type`` / ``issuer_universal_id``). PID-5 (XPN:
  family&..^given^middle^suffix^prefix) -> PN ``family^given^middle^prefix^suffix``; PID-7 birth date (first 8
  digits); PID-8 sex. PID-18.1 admission ID when PV1-19 is empty.
* PV1-3 (point of care, room, bed) patient location; PV1-8 referring physician; PV1-19 visit.
* ORC-1 control (NW, XO, CA, DC, SC; the filler's OC and OD read as CA and DC), ORC-2.1
  placer and ORC-3.1 filler order number (else OBR-2/OBR-3), ORC-5 order status, ORC-7.4 start
  and ORC-7.6 priority (TQ, fallback for OBR-27), ORC-9 date/time of transaction -> ordered at
  (else ORC-15), ORC-12 ordering provider -> requesting physician (else OBR-16), ORC-16 reason
  of a cancel / discontinue, ORC-18.1 entering device (scheduled station AE fallback).
* OBR-4 universal service ID: components 1-3 requested procedure code (value, meaning,
  scheme), 4-6 scheduled protocol code (IHE; dcm4chee's default OBR_4_4); OBR-44 procedure
  code, when sent, is the requested procedure code instead. OBR-18 accession number, OBR-19
  requested procedure ID, OBR-20 scheduled procedure step ID, OBR-21 scheduled station AE
  title (else ORC-18), OBR-24 modality, OBR-27.4 step start (else ORC-7.4, else OBR-36),
  OBR-27.6 priority, OBR-31 reason for study, OBR-34.1 technician -> scheduled performing
  physician. ZDS-1.1 Study Instance UID (absent: the archive makes one).
* TQ1 (OMI^O23, or a v2.5 ORM): TQ1-7 step start, TQ1-9 priority. OMI^O23, per IPC: IPC-1
  accession number, IPC-2 requested procedure ID, IPC-3 Study Instance UID, IPC-4 step ID,
  IPC-5 modality, IPC-6 protocol code, IPC-7 station name, IPC-8 location, IPC-9 station AE
  title. The first IPC gives the order's accession number, requested procedure ID and Study
  Instance UID.
* ADT^A40: MRG-1 (CX; same choice as PID-3) prior patient ID and issuer.
* ORU^R01: OBR-2/OBR-3 (else ORC-2/3) and OBR-18 name the order, OBR-7 observation time ->
  performed at, OBR-22 result time -> reported at, OBR-25 result status, OBR-32.1 principal
  result interpreter (a name -> PN, else the ID, e.g. a licence code), OBX-5 text (TX/FT/ST,
  the text of CE/CWE) joined by new lines.

Priorities (TQ-6 / TQ1-9): S -> STAT, A/P/C -> HIGH, R -> ROUTINE, T -> MEDIUM (IHE).
Time stamps (TS: ``YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]``) become DICOM DT as they are, the
offset kept when sent; ``""`` (the HL7 null) is read as empty.

Character sets (MSH-18, first repetition): empty, ``UNICODE UTF-8``, ``UNICODE`` and ``ASCII``
are read as UTF-8 (a UTF-8 byte order mark is skipped), ``8859/1`` as ISO 8859-1; anything
else, or several code-switched sets, is refused. Text is NFC-normalised so that a name typed
with combining accents equals the same name typed precomposed.

Acknowledgements (HL7 v2.5 2.9.2, original mode): AA after the service committed; AE for content
the service cannot apply (unknown order: 204; a required segment missing: 100, a required field:
101; malformed value: 102; unknown code: 103; others, e.g. two orders in one message or what the
service refuses: 207); AR for a message not taken at all (unparsable or no MSH: 100; bytes not in
the declared charset: 102; unsupported type 200, event 201, processing ID 202, version or charset
203; over ``[hl7] max_message_kb`` or the database down: 207). The ACK swaps MSH-3/4 with MSH-5/6,
echoes MSH-10 in MSA-2, uses the message's encoding characters, version, processing ID and
charset, and carries MSA-3 text plus an ERR segment: ERR-3 code (table 0357), ERR-4 severity
``E``, ERR-8 the reason (v2.5 and later); ERR-1 ``^^^code&text&HL70357`` for v2.3.x/2.4, whose ERR
has only that field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import hl7

from pacs.hl7.ack import ack, escape
from pacs.hl7.header import AckCode, Header, header_of, split_lines
from pacs.hl7.tree import READ, Hl7Error, Msg, Seg, Text
from pacs.services.orders.model import (
    Control,
    MessageId,
    OrderMessage,
    OtherId,
    PatientInfo,
    PatientMerge,
    PatientUpdate,
    Report,
    ScheduledStep,
)

Body = OrderMessage | PatientUpdate | PatientMerge | Report

#: (MSH-9.1, MSH-9.2) -> kind of message.
MESSAGES = {
    ("ORM", "O01"): "order",
    ("OMI", "O23"): "order",
    ("ADT", "A08"): "patient",
    ("ADT", "A31"): "patient",
    ("ADT", "A40"): "merge",
    ("ORU", "R01"): "report",
}
_CONTROLS = {
    "NW": Control.NEW,
    "XO": Control.CHANGE,
    "CA": Control.CANCEL,
    "OC": Control.CANCEL,  # order cancelled (by the filler)
    "DC": Control.DISCONTINUE,
    "OD": Control.DISCONTINUE,  # order discontinued (by the filler)
    "SC": Control.STATUS,
}
_PRIORITIES = {"S": "STAT", "A": "HIGH", "P": "HIGH", "C": "HIGH", "R": "ROUTINE", "T": "MEDIUM"}
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")


def _segment_names() -> dict[str, frozenset[str]]:
    """The standard segments of each version read (the chapter lists of HL7 v2.3 to v2.6, as
    hl7apy 1.3.5 tabulates them); Z segments are allowed besides."""

    def names(text: str) -> frozenset[str]:
        return frozenset(text.split())

    v23 = names(
        "ACC ADD AIG AIL AIP AIS AL1 APR ARQ AUT BHS BLG BTS CDM CM0 CM1 CM2 CSP CSR CSS CTD CTI DB1"
        " DG1 DRG DSC DSP EQL ERQ ERR EVN FAC FHS FT1 FTS GOL GT1 IN1 IN2 IN3 LCC LCH LDP LOC LRL MFA"
        " MFE MFI MRG MSA MSH NCK NK1 NPU NSC NST NTE OBR OBX ODS ODT OM1 OM2 OM3 OM4 OM5 OM6 ORC PCR"
        " PD1 PDC PEO PES PID PR1 PRA PRB PRC PRD PSH PTH PV1 PV2 QAK QRD QRF RDF RDT RF1 RGS ROL RQ1"
        " RQD RXA RXC RXD RXE RXG RXO RXR SCH SPR STF TXA UB1 UB2 URD URS VAR VTQ"
    )
    v24 = v23 | names(
        "ABS AFF BLC CNS ECD ECR EDU EQP EQU GP1 GP2 IAM INV ISD LAN NDS OM7 ORG PDA QID QPD QRI RCP"
        " RMI SAC SID TCC TCD"
    )
    v25 = v24 | names("BPO BPX BTX CER CON IIM IPC OVR SFT SPM TQ1 TQ2")
    v26 = (
        v25
        | names(
            "ADJ ARV DMI ILT IPR ITM IVC IVT PCE PKG PMT PSG PSL PSS PYE REL RFI SCD SCP SDD SLT STZ UAC VND"
        )
    ) - names("EQL ERQ SPR VTQ")
    return {"2.3": v23, "2.3.1": v23, "2.4": v24, "2.5": v25, "2.5.1": v25, "2.6": v26}


_SEGMENTS = _segment_names()


@dataclass(frozen=True)
class Parsed:
    """One message read: its header, what it asks for and its resend key."""

    header: Header
    kind: str  # "order", "patient", "merge", "report"
    body: Body
    message_id: MessageId


# ---------------------------------------------------------------------- the message


def parse(raw: bytes) -> Parsed:
    """Parse one HL7 v2 message (without its MLLP frame) into the orders model.

    Raises :class:`Hl7Error` with ``exc.header`` set (when MSH could be read) for the ACK."""
    header = header_of(raw)
    try:
        return _parse(raw, header)
    except Hl7Error as exc:
        exc.header = header
        raise


def _parse(raw: bytes, header: Header) -> Parsed:
    data = raw.lstrip(b" \t\r\n")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = split_lines(data).decode(header.codec)
    except UnicodeDecodeError as exc:
        raise Hl7Error(
            f"bytes {exc.start}-{exc.end} are not {header.codec.upper()}"
            f" (MSH-18 {header.charset or 'absent'!r})",
            102,
            reject=True,
        ) from exc
    lines = [line for line in text.split("\r") if line.strip()]
    sep = header.encoding["FIELD"]
    for n, line in enumerate(lines, 1):
        name = line[:3]
        if not _SEGMENT_NAME.fullmatch(name) or (len(line) > 3 and line[3] != sep):
            raise Hl7Error(f"segment {n} has no valid segment name", 100, reject=True)
    kind = MESSAGES.get((header.message_type, header.trigger))
    if kind is None:
        if header.message_type in {t for t, _ in MESSAGES}:
            raise Hl7Error(f"{header.name[:16]!r}: event not supported", 201, reject=True)
        raise Hl7Error(f"message type {header.name[:16]!r} is not supported", 200, reject=True)
    if header.processing_id and header.processing_id.upper() not in ("P", "T", "D"):
        raise Hl7Error(
            f"MSH-11 processing ID {header.processing_id[:4]!r} is not P, T or D", 202, reject=True
        )
    known = _SEGMENTS[header.version]
    for line in lines:
        name = line[:3]
        if name not in known and name[0] != "Z":
            raise Hl7Error(f"segment {name} is not an HL7 v{header.version} segment", 100, reject=True)
    # python-hl7 builds a container per field, repetition and component (about 5 us each): it
    # is given only the segments read below, after an MSH cut to its encoding characters (the
    # header was read by header_of), not every EVN, NTE, DG1, IN1 ... of an HIS message.
    msh = sep.join(lines[0].split(sep, 2)[:2])
    body_lines = [line.rstrip() for line in lines[1:] if line[:3] in READ]
    try:
        tree = hl7.parse("\r".join([msh, *body_lines]))  # stripped as hl7apy read them
    except (hl7.ParseException, IndexError, ValueError, TypeError) as exc:
        raise Hl7Error(f"unparsable message ({type(exc).__name__})", 100, reject=True) from exc
    t = Text(header.encoding, header.codec)
    msg = Msg([Seg(s, t) for s in list(tree)[1:]])
    body: Body
    if kind == "order":
        body = _order(msg, header)
    elif kind == "patient":
        body = PatientUpdate(patient=_required_patient(msg))
    elif kind == "merge":
        body = _merge(msg)
    else:
        body = _report(msg)
    return Parsed(header=header, kind=kind, body=body, message_id=MessageId(header.sender, header.control_id))


def _ids(seg: Seg, n: int) -> Iterator[OtherId]:
    for rep in seg.reps(n):
        value = seg.sub(rep, 1)
        if value:
            yield OtherId(
                value=value,
                issuer=seg.sub(rep, 4, 1) or seg.sub(rep, 4, 2),
                type_code=seg.sub(rep, 5).upper(),
                universal_id=seg.sub(rep, 4, 2),
                universal_id_type=seg.sub(rep, 4, 3).upper(),
            )


def _primary(ids: list[OtherId]) -> OtherId | None:
    return next((i for i in ids if i.type_code in ("MR", "PI")), ids[0] if ids else None)


def _patient(pid: Seg) -> PatientInfo:
    ids = list(_ids(pid, 3))
    main = _primary(ids)
    if main is None and pid.get(2):  # v2.3.x external patient ID
        main = OtherId(value=pid.get(2), issuer=pid.get(2, 4) or pid.get(2, 4, 2))
    if main is None:
        raise Hl7Error("PID-3 patient identifier list is empty", 101)
    birth = pid.get(7)
    return PatientInfo(
        patient_id=main.value,
        issuer_of_patient_id=main.issuer,
        name=pid.pn_xpn(5),
        birth_date=birth[:8] if re.fullmatch(r"\d{8}.*", birth) else birth,
        sex=pid.get(8).upper(),
        other_ids=tuple(i for i in ids if i is not main),
        id_type=main.type_code,
        issuer_universal_id=main.universal_id,
        issuer_universal_id_type=main.universal_id_type,
    )


def _required_patient(msg: Msg) -> PatientInfo:
    pids = msg.all("PID")
    if not pids:
        raise Hl7Error("no PID segment", 100)
    if len(pids) > 1:
        raise Hl7Error("one patient per message (several PID segments)", 207)
    return _patient(pids[0])


def _merge(msg: Msg) -> PatientMerge:
    surviving = _required_patient(msg)
    mrg = msg.one("MRG")
    if mrg is None:
        raise Hl7Error("ADT^A40 without MRG segment", 100)
    prior = _primary(list(_ids(mrg, 1)))
    if prior is None:
        raise Hl7Error("MRG-1 prior patient identifier is empty", 101)
    return PatientMerge(surviving=surviving, prior_patient_id=prior.value, prior_issuer=prior.issuer)


def _order(msg: Msg, header: Header) -> OrderMessage:
    orcs, obrs = msg.all("ORC"), msg.all("OBR")
    if not orcs:
        raise Hl7Error(f"{header.name} without ORC segment", 100)
    if len(orcs) > 1 or len(obrs) > 1:
        raise Hl7Error("one order per message: send each requested procedure in its own message", 207)
    orc = orcs[0]
    obr = obrs[0] if obrs else None
    code = orc.get(1).upper()
    control = _CONTROLS.get(code)
    if control is None:
        raise Hl7Error(f"ORC-1 order control {code[:4]!r} is not one of NW, XO, CA, DC, SC", 103)
    opens = control in (Control.NEW, Control.CHANGE)
    if obr is None and opens:
        raise Hl7Error(f"{header.name} {code} without OBR segment", 100)
    placer = orc.get(2) or (obr.get(2) if obr else "")
    filler = orc.get(3) or (obr.get(3) if obr else "")
    if not (placer or filler):
        raise Hl7Error("ORC-2 placer and ORC-3 filler order number are both empty", 101)
    pid = msg.one("PID")
    patient = _patient(pid) if pid is not None else None
    if patient is None and control is Control.NEW:
        raise Hl7Error("a new order (NW) needs a PID segment", 100)
    pv1 = msg.one("PV1")
    omi = header.message_type == "OMI"
    ipcs = msg.all("IPC")
    if omi and opens and not ipcs:
        raise Hl7Error("OMI^O23 without IPC segment", 100)
    tq1 = msg.one("TQ1")
    start = ""
    priority = ""
    if tq1 is not None:  # v2.5 timing (OMI; an ORM of v2.5 may carry it too)
        start = tq1.ts(7, where="TQ1-7")
        priority = tq1.get(9)
    if obr is not None:
        start = (
            start
            or obr.ts(27, 4, where="OBR-27.4")
            or orc.ts(7, 4, where="ORC-7.4")
            or obr.ts(36, where="OBR-36")
        )
        priority = priority or obr.get(27, 6) or orc.get(7, 6)
    else:
        start = start or orc.ts(7, 4, where="ORC-7.4")
        priority = priority or orc.get(7, 6)
    requested_code = (obr.code(44) or obr.code(4)) if obr else None
    performing = obr.pn_cnn(34) if obr else ""
    steps: list[ScheduledStep] = []
    if obr is not None and opens:
        if omi:
            for ipc in ipcs:
                protocol = ipc.code(6)
                steps.append(
                    ScheduledStep(
                        step_id=ipc.get(4),
                        modality=(ipc.get(5) or obr.get(24)).upper(),
                        station_ae_title=ipc.get(9),
                        station_name=ipc.get(7),
                        location=ipc.get(8),
                        start=start,
                        description=(protocol.meaning if protocol else "") or obr.get(4, 5),
                        protocol_code=protocol,
                        performing_physician=performing,
                        study_instance_uid=ipc.get(3),
                        accession_number=ipc.get(1),
                        requested_procedure_id=ipc.get(2),
                    )
                )
        else:
            protocol = obr.code(4, first=4)
            steps.append(
                ScheduledStep(
                    step_id=obr.get(20),
                    modality=obr.get(24).upper(),
                    station_ae_title=obr.get(21) or orc.get(18),
                    start=start,
                    description=protocol.meaning if protocol else "",
                    protocol_code=protocol,
                    performing_physician=performing,
                )
            )
    first_ipc = ipcs[0] if ipcs else None
    zds = msg.one("ZDS")
    ordered_at, ordered_source = orc.ts(9, where="ORC-9"), "HL7 ORC-9"
    if not ordered_at:
        ordered_at, ordered_source = orc.ts(15, where="ORC-15"), "HL7 ORC-15"
    # A new or changed order: the reason for the study; a cancel or discontinue: why.
    reason = orc.get(16, 2) or orc.get(16, 1)
    if opens:
        reason = (obr.get(31, 2) or obr.get(31, 1)) if obr else ""
    return OrderMessage(
        control=control,
        placer_order_number=placer,
        filler_order_number=filler,
        accession_number=(first_ipc.get(1) if first_ipc else "") or (obr.get(18) if obr else ""),
        patient=patient,
        requested_procedure_id=(first_ipc.get(2) if first_ipc else "") or (obr.get(19) if obr else ""),
        requested_procedure_description=((obr.get(44, 2) if obr.get(44) else obr.get(4, 2)) if obr else ""),
        requested_procedure_code=requested_code,
        study_instance_uid=(first_ipc.get(3) if first_ipc else "") or (zds.get(1) if zds else ""),
        steps=tuple(steps),
        referring_physician=pv1.pn_xcn(8) if pv1 else "",
        requesting_physician=orc.pn_xcn(12) or (obr.pn_xcn(16) if obr else ""),
        ordered_at=ordered_at,
        ordered_at_source=ordered_source if ordered_at else "",
        priority=_PRIORITIES.get(priority.upper(), ""),
        order_status=orc.get(5).upper(),
        admission_id=(pv1.get(19) if pv1 else "") or (pid.get(18) if pid else ""),
        patient_location=" ".join(p for p in (pv1.get(3, k) for k in (1, 2, 3)) if p) if pv1 else "",
        reason=reason,
    )


def _report(msg: Msg) -> Report:
    obrs = msg.all("OBR")
    if not obrs:
        raise Hl7Error("ORU^R01 without OBR segment", 100)
    obr = obrs[0]
    orc = msg.one("ORC")
    placer = obr.get(2) or (orc.get(2) if orc else "")
    filler = obr.get(3) or (orc.get(3) if orc else "")
    accession = obr.get(18)
    for other in obrs[1:]:
        if (other.get(2), other.get(3), other.get(18)) not in (
            (obr.get(2), obr.get(3), accession),
            ("", "", ""),
        ):
            raise Hl7Error("one order per report message (OBR segments name different orders)", 207)
    if not (placer or filler or accession):
        raise Hl7Error("OBR-2, OBR-3 and OBR-18 are empty: the report names no order", 101)
    reported_at = obr.ts(22, where="OBR-22")
    if not reported_at:
        raise Hl7Error("OBR-22 result time is missing", 101)
    performed_at = obr.ts(7, where="OBR-7")
    lines: list[str] = []
    for obx in msg.all("OBX"):
        vtype = obx.get(2).upper()
        if vtype in ("TX", "FT", "ST", "CE", "CWE"):
            part = 2 if vtype in ("CE", "CWE") else 1
            lines.extend(t for t in (obx.sub(rep, part) for rep in obx.reps(5)) if t)
    return Report(
        placer_order_number=placer,
        filler_order_number=filler,
        accession_number=accession,
        reported_at=reported_at,
        reported_at_source="HL7 OBR-22",
        reporting_doctor=obr.pn_cnn(32),
        status=obr.get(25).upper() or "F",
        performed_at=performed_at,
        performed_at_source="HL7 OBR-7" if performed_at else "",
        text="\n".join(lines),
    )


__all__ = ["AckCode", "Header", "Hl7Error", "Parsed", "ack", "escape", "header_of", "parse"]
