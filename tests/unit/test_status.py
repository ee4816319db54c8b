"""The one status table (``pacs.dicom.status``): complete, unique, and what pynetdicom knows."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest
from pynetdicom import status as pynetdicom_status

from pacs import errors
from pacs.dicom import status
from pacs.model import StoreOutcome

PACKAGE = Path(__file__).resolve().parents[2] / "pacs"
TABLE = PACKAGE / "dicom" / "status.py"

DOMAIN_ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.PacsError) and cls.__module__ == errors.__name__
]


def _module_constants(path: Path) -> list[str]:
    """Names assigned at module level (upper case: constants)."""
    names = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        names += [t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper()]
    return names


TABLE_CONSTANTS = {
    name: value
    for name, value in vars(status).items()
    if name.isupper() and isinstance(value, int) and not isinstance(value, bool)
}


def test_every_domain_error_has_an_entry() -> None:
    assert errors.PacsError in DOMAIN_ERRORS
    missing = [cls.__name__ for cls in DOMAIN_ERRORS if cls not in status.ANSWERS]
    assert not missing


def test_every_store_outcome_has_an_entry() -> None:
    assert set(status.STORE_OUTCOMES) == set(StoreOutcome)


def test_no_constant_named_twice_in_the_table() -> None:
    names = _module_constants(TABLE)
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_no_status_constant_defined_outside_the_table() -> None:
    """Other modules use the table's names; they do not define their own codes under them."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == TABLE:
            continue
        for name in _module_constants(path):
            if name in TABLE_CONSTANTS:
                offenders.append(f"{path.relative_to(PACKAGE.parent)} defines {name}")
    assert not offenders, "\n".join(offenders)


#: Codes that are only statuses (never tag numbers, groups or command fields).
DISTINCT_CODES = {v for v in TABLE_CONSTANTS.values() if v >= 0xA000}


@pytest.mark.parametrize("edge", ["scp", "web"])
def test_edges_use_names_not_status_literals(edge: str) -> None:
    offenders = []
    for path in sorted((PACKAGE / edge).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and type(node.value) is int and node.value in DISTINCT_CODES:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} 0x{node.value:04X}")
    assert not offenders, "\n".join(offenders)


def test_the_table_is_pure() -> None:
    """stdlib, pacs.errors and pacs.model only: no pydicom, no pynetdicom, no edge."""
    imported = set()
    for node in ast.walk(ast.parse(TABLE.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(
                a.name.split(".")[0] if not a.name.startswith("pacs") else a.name for a in node.names
            )
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module if node.module.startswith("pacs") else node.module.split(".")[0])
    allowed = {"pacs.errors", "pacs.model", "__future__"}
    assert {m for m in imported if m not in allowed and m not in sys.stdlib_module_names} == set()


@pytest.mark.parametrize("service", sorted(status.SERVICE_CODES))
def test_service_codes_are_known_to_pynetdicom(service: str) -> None:
    known = getattr(pynetdicom_status, service)
    unknown = [f"0x{code:04X}" for code in status.SERVICE_CODES[service] if code not in known]
    assert not unknown


@pytest.mark.parametrize("error", DOMAIN_ERRORS, ids=lambda c: c.__name__)
def test_answers_agree_with_pynetdicom(error: type[errors.PacsError]) -> None:
    a = status.ANSWERS[error]
    per_service = [
        (a.c_store, pynetdicom_status.STORAGE_SERVICE_CLASS_STATUS),
        (a.c_find, pynetdicom_status.QR_FIND_SERVICE_CLASS_STATUS),
        (a.c_retrieve, pynetdicom_status.QR_MOVE_SERVICE_CLASS_STATUS),
        (a.c_retrieve, pynetdicom_status.QR_GET_SERVICE_CLASS_STATUS),
        (a.n_create, pynetdicom_status.PROCEDURE_STEP_STATUS),
        (a.n_set, pynetdicom_status.PROCEDURE_STEP_STATUS),
    ]
    for code, known in per_service:
        assert code in known, f"0x{code:04X}"
        assert known[code][0] == "Failure", f"0x{code:04X} is {known[code][0]}, not a failure"
    assert 400 <= a.http < 600
    # Every code an answer uses is also named for its service.
    assert a.c_store in status.SERVICE_CODES["STORAGE_SERVICE_CLASS_STATUS"]
    assert a.c_find in status.SERVICE_CODES["QR_FIND_SERVICE_CLASS_STATUS"]
    assert a.c_retrieve in status.SERVICE_CODES["QR_MOVE_SERVICE_CLASS_STATUS"]
    assert a.c_retrieve in status.SERVICE_CODES["QR_GET_SERVICE_CLASS_STATUS"]
    assert {a.n_create, a.n_set} <= set(status.SERVICE_CODES["PROCEDURE_STEP_STATUS"])


def test_store_outcomes_agree_with_pynetdicom() -> None:
    known = pynetdicom_status.STORAGE_SERVICE_CLASS_STATUS
    for outcome, a in status.STORE_OUTCOMES.items():
        assert known[a.c_store][0] == "Success", outcome
        if a.stow_warning is not None:
            assert known[a.stow_warning][0] == "Warning", outcome


def test_a_subclass_takes_its_nearest_listed_base() -> None:
    class ServiceOwn(errors.InvalidInstance):
        pass

    class Other(errors.PacsError):
        pass

    assert status.answer(ServiceOwn("x")) is status.ANSWERS[errors.InvalidInstance]
    assert status.answer(Other("x")) is status.ANSWERS[errors.PacsError]


def test_the_answers_the_edges_rely_on() -> None:
    """README, "Storing" and "DIMSE": duplicates 0x0111 / 409, a full disk 0xA700 / 503."""
    dup = status.answer(errors.DuplicateInstance("x"))
    assert (dup.c_store, dup.http) == (0x0111, 409)
    full = status.answer(errors.StorageUnavailable("x"))
    assert (full.c_store, full.c_find, full.http) == (0xA700, 0xA700, 503)
    bad = status.answer(errors.InvalidQuery("x"))
    assert (bad.c_find, bad.http) == (0xA900, 400)
    assert status.answer(errors.InvalidInstance("x")).c_store == 0xC000
    missing = status.answer(errors.MissingAttribute("x"))  # PS3.4 F.7.2.1.3 / F.7.2.2.3
    assert (missing.n_create, missing.n_set) == (0x0120, 0x0121)
    done = status.answer(errors.StepNotInProgress("x"))
    assert (done.n_set, done.http) == (0x0110, 409)


def test_over_a_limit_is_413_and_out_of_resources() -> None:
    """A request or decoded object over a configured limit (decompression bombs, issue 14): HTTP
    413 with the reason; DIMSE out of resources (a C-MOVE / C-GET sub-operation is a counted
    failure instead, pacs/services/retrieve.py)."""
    big = status.answer(errors.TooLarge("x"))
    assert (big.http, big.c_store, big.c_find, big.c_retrieve) == (413, 0xA700, 0xA700, 0xA702)
    assert (big.n_create, big.n_set) == (0x0213, 0x0213)


def test_a_retrieve_refusal_uses_the_retrieve_column() -> None:
    """C-MOVE / C-GET answer their own column: a full archive is 0xA701, not C-FIND's 0xA700."""
    from pacs.model import Origin
    from pacs.scp import qr

    full = errors.StorageUnavailable("index down")
    handler = qr.QueryRetrieveSCP.__new__(qr.QueryRetrieveSCP)  # _refused uses no state
    origin = Origin("127.0.0.1", "MODALITY", "PACS", protocol="dimse")
    find = handler._refused("C-FIND", full, origin)
    move = handler._refused("C-MOVE", full, origin)
    assert (find.Status, move.Status) == (0xA700, 0xA701)
    assert move.ErrorComment == "index down"


def test_stow_failure_reason_is_the_c_store_status() -> None:
    for error in DOMAIN_ERRORS:
        assert status.stow_failure_reason(error("x")) == status.ANSWERS[error].c_store
    assert status.stow_failure_reason(errors.InvalidInstance("x"), study_mismatch=True) == 0xA900
    assert status.stow_failure_reason(None) == status.CANNOT_UNDERSTAND


def test_stow_http_status() -> None:
    full, dup = errors.StorageUnavailable("x"), errors.DuplicateInstance("x")
    assert status.stow_http_status(2, []) == 200
    assert status.stow_http_status(1, [dup]) == 202
    assert status.stow_http_status(1, [full]) == 202
    assert status.stow_http_status(0, [dup]) == 409
    assert status.stow_http_status(0, [full, dup]) == 409
    assert status.stow_http_status(0, [full, full]) == 503
