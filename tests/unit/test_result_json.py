"""QIDO-RS results written as text are exactly ``json.dumps`` of the DICOM JSON objects."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pacs.dicom.attributes import ATTRIBUTES, BY_KEYWORD
from pacs.dicom.json import ResultPlan, attribute_json

ROWS: list[dict[str, Any]] = [
    {
        "PatientName": "Nguyễn^Văn An",
        "PatientID": 'P"1\\P\\2',  # a quote to escape, a multi-value
        "StudyDate": "20250101",
        "StudyTime": None,
        "AccessionNumber": "",
        "NumberOfStudyRelatedInstances": 12,
        "NumberOfStudyRelatedSeries": "3",
        "ModalitiesInStudy": "CT\\SR",
        "ReferringPhysicianName": "Yamada^Tarou=山田^太郎=やまだ^たろう\\Lê^Thị",
        "StudyDescription": "tab\\tand\\nnewline\t\n\u0001 end",
        "SeriesNumber": None,
        "InstanceNumber": 0,
        "PatientWeight": "70.5",
        "PatientSize": "1.70\\x",  # one unparsable DS value: the element comes back empty
    },
    {"PatientName": "=", "PatientID": "X", "NumberOfStudyRelatedInstances": None},
    {},
]


@pytest.mark.parametrize("row", ROWS)
def test_text_is_json_dumps_of_the_object(row: dict[str, Any]) -> None:
    keys = [a for a in ATTRIBUTES if a.keyword in row] + [BY_KEYWORD["StudyInstanceUID"]]
    plan = ResultPlan(keys, ("00081190",))
    for extra in (None, {"00081190": {"vr": "UR", "Value": ["http://x/studies/1.2"]}}):
        obj = {f"{a.tag:08X}": attribute_json(a, row[a.keyword]) for a in keys if a.keyword in row}
        obj.update(extra or {})
        expected = json.dumps(dict(sorted(obj.items())), ensure_ascii=False, separators=(",", ":"))
        assert plan.text(row, extra) == expected
        json.loads(plan.text(row, extra))
