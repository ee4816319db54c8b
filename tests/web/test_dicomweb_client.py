"""The dicomweb-client package against a real ``pacs serve`` (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.uid import generate_uid

from tests.factories import make_dataset
from tests.serve import serve
from tests.web.conftest import part10, relabel


def test_every_endpoint_family_with_dicomweb_client(db_url: str, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    cts = [make_dataset(study_uid=study, series_uid=series, instance_number=i + 1) for i in range(3)]
    jls = relabel("MR_small_jpeg_ls_lossless.dcm", study=study)
    jls.PatientName, jls.PatientID = cts[0].PatientName, cts[0].PatientID
    with serve(tmp_path, db_url) as srv:
        dw = DICOMwebClient(url=f"{srv.base_url}/dicom-web")
        # STOW-RS
        stored = dw.store_instances([*cts, pydicom.dcmread(io.BytesIO(part10(jls)))])
        assert len(stored.ReferencedSOPSequence) == 4
        # QIDO-RS
        studies = dw.search_for_studies(
            search_filters={"PatientName": "nguyen*"}, fields=["StudyDescription"]
        )
        assert [s["0020000D"]["Value"][0] for s in studies] == [study]
        assert dw.search_for_studies(search_filters={"PatientID": "nobody"}) == []
        found_series = dw.search_for_series(study_instance_uid=study)
        assert len(found_series) == 2
        insts = dw.search_for_instances(study_instance_uid=study, series_instance_uid=series)
        assert sorted(i["00200013"]["Value"][0] for i in insts) == [1, 2, 3]
        # WADO-RS instances
        got = dw.retrieve_study(study)
        assert sorted(d.SOPInstanceUID for d in got) == sorted(
            [*(c.SOPInstanceUID for c in cts), jls.SOPInstanceUID]
        )
        assert len(dw.retrieve_series(study, series)) == 3
        one = dw.retrieve_instance(study, series, cts[1].SOPInstanceUID)
        assert one.PixelData == cts[1].PixelData
        # Metadata
        assert len(dw.retrieve_study_metadata(study)) == 4
        assert len(dw.retrieve_series_metadata(study, series)) == 3
        meta = dw.retrieve_instance_metadata(study, series, cts[0].SOPInstanceUID)
        assert meta["00080018"]["Value"] == [cts[0].SOPInstanceUID]
        # Frames: native, and the stored JPEG-LS codestream
        (frame,) = dw.retrieve_instance_frames(study, series, cts[0].SOPInstanceUID, frame_numbers=[1])
        assert frame == cts[0].PixelData
        (jframe,) = dw.retrieve_instance_frames(
            study,
            jls.SeriesInstanceUID,
            jls.SOPInstanceUID,
            frame_numbers=[1],
            media_types=(("image/jls", "1.2.840.10008.1.2.4.80"),),
        )
        assert jframe[:2] == b"\xff\xd8"
        (native,) = dw.retrieve_instance_frames(
            study,
            jls.SeriesInstanceUID,
            jls.SOPInstanceUID,
            frame_numbers=[1],
            media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),),
        )
        ref = pydicom.dcmread(io.BytesIO(part10(jls))).pixel_array
        assert np.array_equal(np.frombuffer(native, ref.dtype.newbyteorder("<")).reshape(ref.shape), ref)
        # Rendered
        png = dw.retrieve_instance_rendered(study, series, cts[0].SOPInstanceUID, media_types=("image/png",))
        assert Image.open(io.BytesIO(png)).size == (16, 16)
        jpg = dw.retrieve_instance_frames_rendered(study, series, cts[0].SOPInstanceUID, frame_numbers=[1])
        assert jpg[:2] == b"\xff\xd8"
        multipart = dw.retrieve_series_rendered(study, series)
        assert multipart.count(b"\xff\xd8\xff") >= 3
        assert "http GET /dicom-web/studies" in srv.log()
