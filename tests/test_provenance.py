"""Provenance: the invisible watermark, the C2PA manifest, ``mimaface verify``."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimaface.cli import main as cli_main
from mimaface.demo import asset_path
from mimaface.errors import InputError
from mimaface.media import read_video, write_video
from mimaface.provenance import ProvenanceOptions, Stamp, model_sha256
from mimaface.provenance.manifest import configured_trust, load_signer, local_signer, read_manifest
from mimaface.provenance.verify import INVALID, NO_PROVENANCE, OK, exit_code, verify_file
from mimaface.provenance.watermark import (
    CANDIDATES,
    MAGIC_BITS,
    MAGIC_THRESHOLD,
    Payload,
    Watermarker,
    binomial_tail,
    detect,
    false_positive_bound,
)

PSNR_DB = ProvenanceOptions().psnr_db
MOTION = {"fps": 25, "num_frames": 12, "interpolation": "smooth",
          "frames": [{"frame": 0, "jawOpen": 0.0, "yaw": 0}, {"frame": 6, "jawOpen": 0.5, "yaw": 8},
                     {"frame": 11, "jawOpen": 0.1, "yaw": -5}]}


@pytest.fixture(scope="module", autouse=True)
def config_dir(tmp_path_factory):
    """Signing files (the local CA) go to a fresh folder, never the user's own."""
    folder = tmp_path_factory.mktemp("config")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIMAFACE_CONFIG_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()


def psnr(a, b) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-nostdin", "-loglevel", "error", *args], check=True)


# ------------------------------------------------------------------------------------ payload


def test_payload_bits_round_trip_and_crc_catches_a_flipped_bit():
    payload = Payload(1, "3f2a9")
    bits = payload.bits()
    assert bits.shape == (32,) and Payload.from_bits(bits) == payload
    for index in (0, 5, 23, 31):  # version, hash, crc
        flipped = bits.copy()
        flipped[index] ^= 1
        assert Payload.from_bits(flipped) != payload
        assert Payload.from_bits(flipped) is None
    assert Payload.for_model("abcdef0123" + "0" * 54) == Payload(1, "abcde")
    with pytest.raises(ValueError):
        Payload(1, "ABCDE")
    with pytest.raises(ValueError):
        Payload(16, "abcde")


def test_binomial_threshold():
    assert binomial_tail(0, 32) == 1.0
    assert binomial_tail(32, 32) == 2.0 ** -32
    assert binomial_tail(28, 32) == pytest.approx((35960 + 4960 + 496 + 32 + 1) / 2 ** 32)  # 9.65e-6
    # The decision: at least 28 of 32 magic bits at the best of CANDIDATES (4) alignments.
    assert MAGIC_THRESHOLD == 28 and CANDIDATES == 4
    assert false_positive_bound(MAGIC_THRESHOLD) == pytest.approx(4 * 9.6506e-6, rel=1e-4)
    assert false_positive_bound(MAGIC_THRESHOLD - 1) > 1e-4 and false_positive_bound(10) == 1.0


# ---------------------------------------------------------------------------------- watermark


def test_watermark_on_a_photo_is_invisible_and_survives_downscale_crop_and_jpeg(astronaut, tmp_path):
    payload = Payload(1, "c0ffe")
    marked = Watermarker(payload, PSNR_DB).mark(astronaut)
    assert marked.dtype == np.uint8 and marked.shape == astronaut.shape
    assert PSNR_DB - 0.5 < psnr(marked, astronaut) < PSNR_DB + 0.5
    delta = marked.astype(int) - astronaut
    unclipped = np.all((astronaut > 10) & (astronaut < 245), axis=2)
    assert np.array_equal(delta[unclipped][:, 0], delta[unclipped][:, 1])  # the same delta on R, G and B: luma
    assert np.array_equal(delta[unclipped][:, 0], delta[unclipped][:, 2]) and np.abs(delta).max() < 20
    found = detect([marked])
    assert found.found and found.payload == payload and found.magic_matches == MAGIC_BITS
    assert found.scale == pytest.approx(1.0, abs=0.005)
    assert not detect([astronaut]).found
    # 10 % crop off-centre, 0.5x, then JPEG quality 80: an image's worst day.
    h, w = marked.shape[:2]
    attacked = Image.fromarray(marked[int(0.03 * h):int(0.93 * h), int(0.07 * w):int(0.97 * w)])
    attacked = attacked.resize((attacked.width // 2, attacked.height // 2), Image.LANCZOS)
    attacked.save(tmp_path / "attacked.jpg", quality=80)
    found = detect([np.asarray(Image.open(tmp_path / "attacked.jpg"))])
    assert found.found and found.payload == payload
    assert found.scale == pytest.approx(0.5, abs=0.01)


def test_video_voting_survives_h264_crf28_half_rate_downscale_and_crop(astronaut, tmp_path):
    """A still photo held for 24 frames (the picture gives no help: every frame is the same)."""
    payload = Payload(1, "0a1b2")
    frame = np.asarray(Image.fromarray(astronaut).resize((384, 384), Image.LANCZOS))
    marker = Watermarker(payload, PSNR_DB)
    write_video(tmp_path / "marked.mp4", [marker.mark(frame)] * 24, 25)
    ffmpeg("-i", str(tmp_path / "marked.mp4"), "-vf",
           "crop=trunc(iw*0.45)*2:trunc(ih*0.45)*2:trunc(iw*0.07):trunc(ih*0.03),scale=trunc(iw/4)*2:trunc(ih/4)*2,"
           "fps=12.5", "-c:v", "libx264", "-crf", "28", "-pix_fmt", "yuv420p", str(tmp_path / "attacked.mp4"))
    frames, fps = read_video(tmp_path / "attacked.mp4")
    assert fps == pytest.approx(12.5) and frames.shape[2] < 0.46 * 384
    found = detect(frames)
    assert found.found and found.frames == len(frames)
    write_video(tmp_path / "plain.mp4", [frame] * 24, 25)
    assert not detect(read_video(tmp_path / "plain.mp4")[0]).found


def test_unmarked_photos_and_synthtalk_frames_are_not_detected(tiny_synthtalk):
    import matplotlib.cbook
    import skimage.data

    images = [skimage.data.camera(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(),
              np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")))]
    images += [np.load(path)[0] for path in sorted(tiny_synthtalk.rglob("frames.npy"))[:4]]
    for image in images:
        found = detect([np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image])
        assert not found.found and found.payload is None and found.magic_matches < MAGIC_THRESHOLD


ALL_ATTACKS = ("crop=trunc(iw*0.45)*2:trunc(ih*0.45)*2:trunc(iw*0.07):trunc(ih*0.03),scale=trunc(iw/4)*2:trunc(ih/4)*2,"
               "fps=12.5")  # 10 % crop off-centre, 0.5x, half the frame rate (then CRF 28)


def test_generated_256_px_video_survives_all_attacks_combined(tmp_path):
    """The issue's hardest case: a 256 px warp video (the bundled portrait, talk.json, 75 frames)
    cropped, halved to 114 px, at half the frame rate and CRF 28. The previous version read 27-31
    of the 32 magic bits over six payloads (28 needed); this one reads all 32 for each."""
    from mimaface.pipelines.animate import AnimateOptions, animate

    plain = tmp_path / "plain.mp4"
    animate(asset_path("portrait.jpg"), asset_path("talk.json"), plain,
            AnimateOptions(provenance=ProvenanceOptions(enabled=False)), progress=False)
    frames, fps = read_video(plain)
    assert frames.shape[1:3] == (256, 256) and len(frames) == 75
    payload = Payload(1, "0a1b2")
    marker = Watermarker(payload, PSNR_DB)
    write_video(tmp_path / "marked.mp4", [marker.mark(f) for f in frames], fps)
    ffmpeg("-i", str(tmp_path / "marked.mp4"), "-vf", ALL_ATTACKS, "-c:v", "libx264", "-crf", "28", "-pix_fmt",
           "yuv420p", str(tmp_path / "attacked.mp4"))
    attacked = read_video(tmp_path / "attacked.mp4")[0]
    assert attacked.shape[1:3] == (114, 114)
    found = detect(attacked)
    assert found.found and found.magic_matches >= 30 and found.scale == pytest.approx(0.5, abs=0.015)
    assert not detect(read_video(plain)[0]).found


def test_marking_any_frame_size(astronaut):
    """Sizes (from 256 px up) that are not a multiple of the chip or the tile read back whole at the
    asked PSNR; a frame smaller than one chip is left as it is."""
    payload = Payload(1, "5e7a1")
    marker = Watermarker(payload, PSNR_DB)
    for height, width in ((257, 301), (256, 390), (301, 511)):
        frame = astronaut[:height, 512 - width:]
        marked = marker.mark(frame)
        assert marked.shape == frame.shape and PSNR_DB - 0.5 < psnr(marked, frame) < PSNR_DB + 0.5
        found = detect([marked])
        assert found.found and found.magic_matches == MAGIC_BITS and found.payload == payload, (height, width)
    tiny = astronaut[:3, :3]
    assert np.array_equal(marker.mark(tiny), tiny)


def test_band_is_the_narrow_blur_less_a_2_px_gaussian(astronaut):
    """The reader's band takes its wide blur at half resolution; it stays that band-pass (the
    difference is 4-6 % of the band's RMS on photos, 13 % on white noise)."""
    import cv2
    import skimage.data

    from mimaface.provenance.watermark import BAND, _band

    noise = np.random.default_rng(0).normal(0, 10, (256, 320)).astype(np.float32)
    for image, least in ((astronaut[..., 1].astype(np.float32), 0.998), (skimage.data.camera().astype(np.float32), 0.998),
                         (noise, 0.99)):
        exact = cv2.GaussianBlur(image, (3, 3), 0) - cv2.GaussianBlur(image, (0, 0), BAND[1])
        assert np.corrcoef(exact.ravel(), _band(image).ravel())[0, 1] > least


def test_detect_needs_frames_of_one_size():
    with pytest.raises(ValueError):
        detect([])
    with pytest.raises(ValueError):
        detect([np.zeros((64, 64, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)])


# --------------------------------------------------------------------------- the whole job


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """`mimaface animate` (warp engine) with the side-by-side and PNG frames, and with --no-watermark."""
    folder = tmp_path_factory.mktemp("job")
    (folder / "motion.json").write_text(json.dumps(MOTION))
    common = ["animate", "--source", str(asset_path("portrait.jpg")), "--driving", str(folder / "motion.json"), "-q"]
    assert cli_main([*common, "-o", str(folder / "out.mp4"), "--side-by-side", str(folder / "sbs.mp4"),
                     "--frames-dir", str(folder / "frames")]) == 0
    assert cli_main([*common, "-o", str(folder / "plain.mp4"), "--no-watermark"]) == 0
    return folder


def test_generated_video_verifies_and_every_output_is_marked_and_signed(job, config_dir):
    from mimaface.warp import MeshWarpPipeline

    expected = Payload.for_model(model_sha256(MeshWarpPipeline()))
    outputs = [job / "out.mp4", job / "sbs.mp4", *sorted((job / "frames").glob("*.png"))]
    assert len(outputs) == 2 + MOTION["num_frames"]
    for path in outputs[:4]:
        result = verify_file(path)
        assert result.watermark.found and result.watermark.payload == expected, path
        assert result.manifest.state == "valid" and "not trusted" in result.manifest.reason
        record = result.manifest.record
        assert record["engine"] == "warp" and record["model_sha256"].startswith(expected.model_hash)
        assert record["source_sha256"] == _sha256(asset_path("portrait.jpg"))
        assert record["watermark"]["model_hash"] == expected.model_hash
    trusted = verify_file(job / "out.mp4", [config_dir / "local-signing" / "ca.pem"])
    assert trusted.manifest.state == "trusted"
    assert exit_code([verify_file(p) for p in outputs[:3]]) == OK


def test_manifest_states_the_created_action(job):
    import c2pa

    manifest = c2pa.Reader(str(job / "out.mp4")).get_active_manifest()
    actions = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))["data"]["actions"]
    created = actions[0]
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"].endswith("/trainedAlgorithmicMedia")
    assert created["softwareAgent"]["name"] == "mimaface"
    assert set(created["parameters"]) >= {"model_sha256", "source_sha256", "engine"}


def test_unmarked_output_does_not_verify(job, capsys):
    result = verify_file(job / "plain.mp4")
    assert not result.watermark.found and result.manifest.state == "absent"
    assert exit_code([result]) == NO_PROVENANCE
    capsys.readouterr()
    assert cli_main(["verify", str(job / "out.mp4"), str(job / "plain.mp4")]) == NO_PROVENANCE
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["FILE", "WATERMARK"]
    assert "found" in table[1] and "valid" in table[1] and "not found" in table[2] and "absent" in table[2]


def test_one_byte_changed_makes_the_manifest_invalid(job, tmp_path, capsys):
    data = bytearray((job / "out.mp4").read_bytes())
    mdat = data.index(b"mdat")
    data[mdat + 5000] ^= 0xFF  # inside the media data
    (tmp_path / "changed.mp4").write_bytes(bytes(data))
    result = verify_file(tmp_path / "changed.mp4")
    assert result.manifest.state == "invalid" and "mismatch" in result.manifest.reason
    assert cli_main(["verify", str(tmp_path / "changed.mp4")]) == INVALID
    assert "invalid" in capsys.readouterr().out


def test_reencoded_copy_loses_the_manifest_but_keeps_the_watermark(job, tmp_path):
    ffmpeg("-i", str(job / "out.mp4"), "-c:v", "libx264", "-crf", "23", "-pix_fmt", "yuv420p", str(tmp_path / "copy.mp4"))
    result = verify_file(tmp_path / "copy.mp4")
    assert result.manifest.state == "absent"
    assert result.watermark.found and result.watermark.payload == verify_file(job / "out.mp4").watermark.payload
    assert exit_code([result]) == OK


def test_diffusion_engine_frames_are_marked_too(tmp_path):
    from mimaface.pipelines.pipeline import MIMAFacePipeline

    (tmp_path / "motion.json").write_text(json.dumps(MOTION))
    assert cli_main(["animate", "--source", str(asset_path("portrait.jpg")), "--driving", str(tmp_path / "motion.json"),
                     "-o", str(tmp_path / "d.mp4"), "--engine", "diffusion", "--steps", "2", "-q"]) == 0
    result = verify_file(tmp_path / "d.mp4")
    assert result.watermark.found and result.manifest.state == "valid"
    diffusion = model_sha256(MIMAFacePipeline.from_pretrained())
    assert result.watermark.payload == Payload.for_model(diffusion)
    assert result.manifest.record["engine"] == "diffusion" and result.manifest.record["model_sha256"] == diffusion
    from mimaface.warp import MeshWarpPipeline

    assert diffusion != model_sha256(MeshWarpPipeline())


# ---------------------------------------------------------------------------- credentials


def _sha256(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _make_chain(folder: Path, *, self_signed: bool = False) -> tuple[Path, Path]:
    """A CA and a leaf it issues (or a self-signed leaf), EC P-256, as a user's own credentials."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Studio CA")])
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Studio signer")])

    def build(subject, issuer, public, ca: bool):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        if not ca:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                (key if issuer == subject else ca_key).public_key()), critical=False)
        return builder

    pem = serialization.Encoding.PEM
    if self_signed:
        chain = build(leaf_name, leaf_name, key.public_key(), False).sign(key, hashes.SHA256()).public_bytes(pem)
    else:
        ca = build(ca_name, ca_name, ca_key.public_key(), True).sign(ca_key, hashes.SHA256())
        leaf = build(leaf_name, ca_name, key.public_key(), False).sign(ca_key, hashes.SHA256())
        chain = leaf.public_bytes(pem) + ca.public_bytes(pem)
        (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "chain.pem").write_bytes(chain)
    (folder / "key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "chain.pem", folder / "key.pem"


def test_user_certificate_signs_and_its_ca_makes_it_trusted(tmp_path, astronaut):
    cert, key = _make_chain(tmp_path)
    source = tmp_path / "portrait.png"
    Image.fromarray(astronaut).save(source)
    (tmp_path / "one.json").write_text(json.dumps({"fps": 25, "num_frames": 1, "frames": [{"frame": 0, "yaw": 5}]}))
    assert cli_main(["animate", "--source", str(source), "--driving", str(tmp_path / "one.json"), "-o",
                     str(tmp_path / "out.png"), "--sign-cert", str(cert), "--sign-key", str(key), "-q"]) == 0
    check = read_manifest(tmp_path / "out.png")
    assert check.state == "valid" and check.reason.startswith("Test Studio signer")
    assert read_manifest(tmp_path / "out.png", [tmp_path / "ca.pem"]).state == "trusted"
    assert detect([np.asarray(Image.open(tmp_path / "out.png"))]).found


def test_bad_credentials_fail_before_anything_is_written(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    cert, _ = _make_chain(tmp_path)
    _, wrong_key = _make_chain(other)
    (tmp_path / "motion.json").write_text(json.dumps(MOTION))
    common = ["animate", "--source", str(asset_path("portrait.jpg")), "--driving", str(tmp_path / "motion.json"), "-q"]
    for flags, message in ((["--sign-cert", str(cert)], "go together"),
                           (["--sign-cert", str(cert), "--sign-key", str(wrong_key)], "does not belong"),
                           (["--sign-cert", str(tmp_path / "nope.pem"), "--sign-key", str(wrong_key)], "no such file")):
        capsys.readouterr()
        assert cli_main([*common, "-o", str(tmp_path / "out.mp4"), *flags]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "out.mp4").exists()
    self_cert, self_key = _make_chain(other, self_signed=True)
    assert cli_main([*common, "-o", str(tmp_path / "out.mp4"), "--sign-cert", str(self_cert),
                     "--sign-key", str(self_key)]) == 2
    assert "self-signed" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.pem", "chain.pem", "key.pem", "motion.json", "other"]


def test_local_ca_is_created_once_with_a_private_key_only_the_user_reads(config_dir):
    first = local_signer()
    folder = config_dir / "local-signing"
    assert sorted(p.name for p in folder.iterdir()) == ["ca.pem", "signer-chain.pem", "signer-key.pem"]
    assert (folder / "signer-key.pem").stat().st_mode & 0o077 == 0
    second = load_signer()
    assert second.chain == first.chain and second.key == first.key and second.algorithm == "es256"


def test_config_file_names_the_certificate_and_the_trusted_cas(tmp_path, monkeypatch):
    cert, key = _make_chain(tmp_path)
    monkeypatch.setenv("MIMAFACE_CONFIG_DIR", str(tmp_path))
    (tmp_path / "signing.toml").write_text(f'cert = "{cert}"\nkey = "key.pem"\ntrust = ["ca.pem"]\n')
    credentials = load_signer()
    assert credentials.chain == cert.read_bytes() and credentials.key == key.read_bytes()
    assert "signing.toml" in credentials.origin and configured_trust() == [tmp_path / "ca.pem"]
    (tmp_path / "signing.toml").write_text('cert = "chain.pem"\n')
    with pytest.raises(InputError):
        load_signer()
    (tmp_path / "signing.toml").write_text('sign = "x"\n')
    with pytest.raises(InputError):
        load_signer()


def test_stamp_for_a_job_is_none_without_provenance(astronaut):
    from mimaface.warp import MeshWarpPipeline

    pipeline = MeshWarpPipeline()
    assert Stamp.for_job(ProvenanceOptions(enabled=False), pipeline, engine="warp", source=astronaut) is None
    stamp = Stamp.for_job(ProvenanceOptions(), pipeline, engine="warp", source=astronaut)
    assert stamp.payload == Payload.for_model(model_sha256(pipeline))
    assert model_sha256(pipeline) == model_sha256(MeshWarpPipeline())  # the same face model, the same hash
    assert os.environ["MIMAFACE_CONFIG_DIR"] in stamp.signer
