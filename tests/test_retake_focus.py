"""Issue 22: a blurred field is refused on every path, a sharp one is not, a retaken field
(re-encoded, shifted, rescaled, a little blurred) adds 0 cells, a sharper retake replaces the
counted field atomically, and the camera never takes a field mid-focus."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.device.preprocess import read_image

FIXTURES = Path(__file__).parent / "fixtures"
FIELD = FIXTURES / "fields" / "BloodImage_00099.jpg"
BUNDLE = FIXTURES / "golden_bundle"


def _jpeg(rgb: np.ndarray, q: int = 70) -> bytes:
    import cv2

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()


def _retake(rgb: np.ndarray, scale: float = 0.9, blur: float = 1.0) -> np.ndarray:
    """The same field photographed again: 5% shift, rescaled, a little blurred."""
    import cv2

    h, w = rgb.shape[:2]
    m = np.float32([[scale, 0, 0.05 * w + (1 - scale) * w / 2], [0, scale, 0.05 * h + (1 - scale) * h / 2]])
    out = cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    return cv2.GaussianBlur(out, (0, 0), blur) if blur else out


def _blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(rgb, (0, 0), sigma)


# ------------------------------------------------------------------ focus and identity measures


def test_identity_tells_retakes_from_other_fields():
    from edgekit.device.field.identity import Signature, same_field, signature

    a = read_image(FIELD)
    b = read_image(FIXTURES / "fields" / "BloodImage_00014.jpg")
    sig = signature(a)
    assert Signature.from_bytes(sig.to_bytes()).thumb.tobytes() == sig.thumb.tobytes()
    for scale in (0.9, 1 / 0.9, 1.0):
        assert same_field(sig, signature(read_image_bytes(_jpeg(_retake(a, scale))))), scale
    assert not same_field(sig, signature(b))
    assert not same_field(sig, signature(a[:, ::-1]))  # the mirrored field is another view


def test_a_session_check_prepares_the_new_field_once_with_the_same_matches(monkeypatch):
    """`check_field` high-passed the new field's thumbnail (and made the window) again for every
    field the session had counted: half of that work, repeated. Now once per check, same matches."""
    from edgekit.device.field import identity
    from edgekit.device.screening import CutField, check_field

    a = read_image(FIELD)
    others = [read_image(FIXTURES / "fields" / "BloodImage_00014.jpg"), a[:, ::-1], a[::-1], a[:400]]
    sigs = [identity.signature(x) for x in others]
    new = identity.signature(read_image_bytes(_jpeg(_retake(a, 1 / 0.9))))
    for old in [*sigs, identity.signature(a)]:  # a probe matches bit for bit, any shape
        assert identity.match(identity.probe(new), old) == identity.match(new, old)

    class Store:
        def fields(self, session_id):
            return [{"id": i + 1, "signature": s.to_bytes(), "sharpness": 1.0, "source_id": f"f{i}"}
                    for i, s in enumerate(sigs)]

    class Session:
        id = 1

    calls = []
    real = identity._highpass
    monkeypatch.setattr(identity, "_highpass", lambda t: calls.append(t.shape) or real(t))
    check = check_field(Store(), Session(), "new", CutField(new, []), focus=1.0)  # type: ignore[arg-type]
    assert check.verdict == "new"
    assert len(calls) == len(sigs) + 1, calls


def test_a_field_match_does_not_rest_on_phase_correlate_leaving_its_inputs_alone(monkeypatch):
    """OpenCV 4.x's `phaseCorrelate` multiplies the arrays it is given by the window in place (when
    no padding is needed, as for a 160x120 thumbnail; checked on 4.10): `match` windowed both
    thumbnails again at every scale, and on OpenCV 4.10 3 of 71 same-field pairs of 23 signatures were
    missed that OpenCV 5 finds. The window is applied by `match` now: the same matches either way."""
    import cv2

    from edgekit.device.field import identity

    a = read_image(FIELD)
    b = read_image(FIXTURES / "fields" / "BloodImage_00014.jpg")
    sigs = [identity.signature(x) for x in (a, _retake(a, 0.9), _retake(a, 1 / 0.9), b)]
    new = identity.probe(sigs[0])
    expected = [identity.match(new, s) for s in sigs[1:]]
    real = cv2.phaseCorrelate

    def in_place(src1, src2, window=None):  # what OpenCV 4.x does with a window
        if window is None:
            return real(src1, src2)
        np.multiply(src1, window, out=src1)
        np.multiply(src2, window, out=src2)
        return real(src1, src2)

    monkeypatch.setattr(cv2, "phaseCorrelate", in_place)
    new = identity.probe(sigs[0])
    assert [identity.match(new, s) for s in sigs[1:]] == expected
    assert identity.same_field(sigs[0], sigs[1]) and not identity.same_field(sigs[0], sigs[3])


def read_image_bytes(data: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].copy()


# ------------------------------------------------------------------ the phone page


@pytest.fixture()
def client(tmp_path):
    from test_serve import AUTH, _client, _session, _station

    st = _station(tmp_path)
    c = _client(st)
    yield c, _session(c), AUTH
    st.close()


def _up(client, sid, data, auth, name="field.jpg", replace=False):
    r = client.post(f"/api/sessions/{sid}/images", params={"kind": "field", "name": name, "replace": replace},
                    content=data, headers={**auth, "Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    return r.json()


def test_serve_refuses_blurred_and_counts_a_retake_once(client):
    c, sid, auth = client
    rgb = read_image(FIELD)
    for sigma in (2, 4):
        out = _up(c, sid, _jpeg(_blur(rgb, sigma), 90), auth, f"blur{sigma}.jpg")
        assert out["result"]["rejected"].startswith("out of focus"), out["result"]["rejected"]
        assert out["recorded"]["new"] in (0, 1) and out["summary"]["crops"] == 0
    first = _up(c, sid, _jpeg(rgb, 95), auth, "first.jpg")
    n = first["summary"]["crops"]
    assert first["result"]["rejected"] is None and n > 5 and first["field"]["verdict"] == "new"
    for scale in (0.9, 1 / 0.9):
        again = _up(c, sid, _jpeg(_retake(rgb, scale, 0.5)), auth, "retake.jpg")
        why = again["result"]["rejected"]
        if scale < 1:  # (enlarged by interpolation, this near-floor BCCD field may be refused as soft)
            assert again["field"]["verdict"] == "duplicate", again["field"]
        assert "this field is already counted" in why or why.startswith("out of focus"), why
        assert again["summary"]["crops"] == n  # 0 cells added


def test_serve_sharper_retake_replaces_the_counted_field_atomically(client, tmp_path):
    c, sid, auth = client
    rgb = read_image(FIELD)
    soft = _up(c, sid, _jpeg(_blur(rgb, 0.6), 90), auth, "soft.jpg")
    assert soft["field"]["verdict"] == "new", soft["result"]["rejected"]
    n_soft = soft["summary"]["crops"]
    plain = _up(c, sid, _jpeg(_retake(rgb, 1.0, 0), 95), auth, "sharp.jpg")  # sharper, but not asked
    assert plain["field"]["verdict"] == "duplicate" and plain["summary"]["crops"] == n_soft
    assert plain["field"]["sharper"] is True  # the page offers to count it instead
    assert soft["field"]["sharper"] is False
    out = _up(c, sid, _jpeg(_retake(rgb, 1.0, 0), 95), auth, "sharp.jpg", replace=True)
    assert out["field"]["verdict"] == "replace" and out["field"]["duplicate_of"].startswith("soft")
    kept = c.get(f"/api/sessions/{sid}/uploads/{out['sha256']}", headers=auth).json()
    assert kept["answer"]["field"]["verdict"] == "replace"  # asked about later: the answer that holds
    records = c.get(f"/api/sessions/{sid}", headers=auth).json()["records"]
    replaced = [r for r in records if r["status"] == "replaced"]
    assert len(replaced) == n_soft and all(r["source_id"].startswith("soft") for r in replaced)
    assert out["summary"]["crops"] == sum(r["status"] == "classified" for r in records)
    assert all(r["source_id"].startswith("sharp") for r in records if r["status"] == "classified")


# ------------------------------------------------------------------ screen --fields


def test_screen_fields_refuses_blurred_and_retaken_fields(tmp_path):
    import cv2

    rgb = read_image(FIELD)
    folder = tmp_path / "fields"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_sharp.png"), rgb[:, :, ::-1])
    (folder / "b_retake.jpg").write_bytes(_jpeg(_retake(rgb, 0.9, 0.5)))
    (folder / "c_blur2.jpg").write_bytes(_jpeg(_blur(rgb, 2), 90))
    db = tmp_path / "s.sqlite"
    res = CliRunner().invoke(main, ["screen", "--patient", "R", "--fields", str(folder), "--model",
                                    str(BUNDLE), "--db", str(db), "--stop-cells", "0", "--json",
                                    "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "b_retake.jpg: not counted: this field is already counted" in res.stderr, res.stderr
    rows = sqlite3.connect(db).execute("select source_id, status, reason from records").fetchall()
    assert not any("b_retake" in r[0] for r in rows)  # the retake adds 0 cells
    blurred = [r for r in rows if "c_blur2" in r[0]]
    assert len(blurred) == 1 and blurred[0][1] == "rejected" and blurred[0][2].startswith("out of focus")
    fields = sqlite3.connect(db).execute("select source_id, status from fields").fetchall()
    assert len(fields) == 1 and "a_sharp" in fields[0][0]


# ------------------------------------------------------------------ the camera


def _focus_pull_video(fields: list[np.ndarray], path: Path, fps: float = 15, shake: int = 1) -> None:
    """Each field: arrive out of focus, pull focus (sigma 3 -> 0 over 12 frames), hold 12 frames,
    with +-``shake`` px of hand jitter on every frame and sensor noise; then a blurred pan."""
    import cv2

    h, w = fields[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h))
    rng = np.random.default_rng(0)

    def write(rgb):
        dx, dy = rng.integers(-shake, shake + 1, 2) if shake else (0, 0)
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        frame = cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REFLECT)
        frame = np.clip(frame + rng.normal(0, 1.5, frame.shape), 0, 255).astype(np.uint8)
        out.write(np.ascontiguousarray(frame[:, :, ::-1]))

    for i, rgb in enumerate(fields):
        for sigma in np.linspace(3, 0, 12):
            write(cv2.GaussianBlur(rgb, (0, 0), float(sigma)) if sigma > 0.05 else rgb)
        for _ in range(12):
            write(rgb)
        if i + 1 < len(fields):
            for k in range(1, 5):
                strip = np.concatenate([rgb[:, k * w // 5:], fields[i + 1][:, :k * w // 5]], axis=1)
                write(cv2.blur(strip, (41, 1)))
    out.release()


def test_camera_focus_pull_with_shake_takes_each_field_once_at_focus():
    from microscope_video import variants

    from edgekit.device.field.focus import focus_score
    from edgekit.device.live import CaptureSettings, FieldCapture

    fields = variants(read_image(FIELD))[:3]
    sharp = [focus_score(f) for f in fields]
    import tempfile

    from edgekit.device.camera import frames

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "pull.avi"
        _focus_pull_video(fields, video)
        cap = FieldCapture(CaptureSettings())
        taken = [t for fr in frames(str(video)) if (t := cap.offer(fr)) is not None]
    assert cap.stats.fields == len(fields) == len(taken), cap.stats.line()
    for got, want in zip(taken, sharp, strict=True):
        assert focus_score(got) >= 0.85 * want, (focus_score(got), want)  # none mid-focus


def test_camera_says_hold_still_when_shake_prevents_capture():
    from edgekit.device.live import CaptureSettings, FieldCapture

    rgb = read_image(FIELD)
    cap = FieldCapture(CaptureSettings(settle=3))
    for k in range(12):
        cap.offer(np.roll(rgb, 6 * (-1) ** k, axis=1))  # 12 px back and forth every frame
    assert cap.stats.fields == 0 and cap.hold_still and cap.stats.shaking >= 10


def test_camera_fields_says_hold_still_once_per_spell_and_counts_the_focused_frame():
    """`screen --camera`'s field source: the worker hears "hold still" once when shake starts keeping
    a field from being taken (not at every frame), and the field segmented is the one the capture
    took (the sharpest of the still run), not whichever frame came last."""
    from edgekit.device.live import CaptureSettings, FieldCapture, camera_fields

    rgb = read_image(FIELD)
    shaky = [np.roll(rgb, 6 * (-1) ** k, axis=1) for k in range(12)]
    said: list[int] = []
    cap = FieldCapture(CaptureSettings(settle=3))
    assert list(camera_fields(iter(shaky), cap, said.append)) == []
    assert len(said) == 1 and cap.hold_still  # one notice for the whole spell

    import cv2

    def blurred(sigma: float) -> np.ndarray:
        return cv2.GaussianBlur(rgb, (0, 0), sigma)

    frames = [blurred(1.5), rgb, rgb, blurred(0.4), blurred(0.4)]  # in focus, then a touch past it
    got = list(camera_fields(iter(frames), FieldCapture(CaptureSettings(settle=3))))
    assert len(got) == 1 and np.array_equal(got[0][2], rgb)  # taken while the last frame was past focus
