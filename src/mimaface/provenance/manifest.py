"""C2PA manifests (content credentials) on generated files, with ``c2pa-python``.

Every MP4, PNG and JPEG a generation job writes gets a manifest with a ``c2pa.created`` action
(digitalSourceType ``trainedAlgorithmicMedia``, mimaface's name and version, the model's hash and
the source portrait's hash) and a ``org.mimaface.generation`` assertion with the same facts and
the watermark's payload. It is signed, offline, with:

1. the certificate chain and key the user gives (``--sign-cert``, ``--sign-key``), else
2. those named in the config file (``signing.toml`` in the config folder: ``cert = "..."``,
   ``key = "..."``; ``trust = ["..."]`` lists CAs ``mimaface verify`` trusts), else
3. a local signing CA and a leaf certificate it issued, created once in the config folder's
   ``local-signing/``. Such a signature is **valid but trusted by no one else**: a reader reports
   it as "valid" (the file is unchanged since it was signed, by the holder of that key) and as
   "trusted" only once they add ``local-signing/ca.pem`` to their trust anchors. The CA's private
   key is discarded once the leaf is issued, so nothing else can ever be issued in its name.

The config folder is ``$MIMAFACE_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/mimaface``, else
``~/.config/mimaface``. C2PA needs an EC (P-256/384/521), Ed25519 or RSA-PSS key whose certificate is
issued by a CA: a self-signed leaf is refused. No timestamp authority is used (offline).
"""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
import sys
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from mimaface.errors import InputError, one_line
from mimaface.provenance.watermark import FORMAT_VERSION, KEY, Payload

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
ASSERTION = "org.mimaface.generation"
MIME_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".png": "image/png",
              ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
CONFIG_FILE = "signing.toml"
LOCAL_FOLDER = "local-signing"
LOCAL_YEARS = 10  # validity of the local CA and leaf
#: Not a failure of the file: only that no trust anchor vouches for the signer (the state says so).
UNTRUSTED = "signingCredential.untrusted"


@dataclass
class GenerationRecord:
    """The facts a manifest states about a generated file."""

    engine: str  # "warp" or "diffusion"
    model_sha256: str
    source_sha256: str  # of the source portrait's file (or, without a file, of its RGB pixels)
    watermark: Payload


@dataclass
class Credentials:
    """A signing certificate chain (PEM, signer first) with its key, and where they came from."""

    chain: bytes
    key: bytes
    algorithm: str  # c2pa's name: es256, es384, es512, ed25519, ps256
    origin: str


@dataclass
class ManifestCheck:
    """What a file's manifest says: its state and why."""

    state: str  # "absent", "valid" (signature good, signer not trusted), "trusted" or "invalid"
    reason: str  # the failure codes of an invalid one; the signer of a valid or trusted one
    record: dict | None = None  # the org.mimaface.generation assertion


# ---------------------------------------------------------------------------------------- signing


def manifest_definition(record: GenerationRecord, title: str) -> dict:
    from mimaface import __version__

    facts = {"engine": record.engine, "model_sha256": record.model_sha256, "source_sha256": record.source_sha256}
    watermark = {"method": KEY.decode(), "format_version": FORMAT_VERSION, **asdict(record.watermark)}
    return {
        "claim_generator_info": [{"name": "mimaface", "version": __version__}],
        "title": title,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created", "digitalSourceType": DIGITAL_SOURCE_TYPE,
                "softwareAgent": {"name": "mimaface", "version": __version__}, "parameters": facts}]}},
            {"label": ASSERTION, "data": {**facts, "watermark": watermark}},
        ],
    }


def sign_in_place(path: Path, record: GenerationRecord, credentials: Credentials) -> None:
    """Embed a signed manifest in the file ``path`` (written to a sibling, then renamed over it)."""
    import c2pa

    path = Path(path)
    mime = MIME_TYPES.get(path.suffix.lower())
    if mime is None:
        raise InputError(f"{path}: cannot sign a {path.suffix or 'suffix-less'} file (use {', '.join(MIME_TYPES)})")
    signed = path.with_name(f".{path.name}.{secrets.token_hex(4)}.signing")
    try:
        # No thumbnail: it would cost a JPEG encode per PNG frame, and the file is its own picture.
        context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
        builder = c2pa.Builder(manifest_definition(record, path.name), context)
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(credentials.algorithm, credentials.chain,
                                                           credentials.key, None))
        with open(path, "rb") as source, open(signed, "w+b") as dest:
            builder.sign(signer, mime, source, dest)
        os.replace(signed, path)
    except c2pa.C2paError as err:
        raise InputError(f"could not sign the output with {credentials.origin} ({one_line(err)})") from err
    finally:
        signed.unlink(missing_ok=True)


def load_signer(cert: str | os.PathLike | None = None, key: str | os.PathLike | None = None) -> Credentials:
    """The credentials to sign with: ``cert`` and ``key`` (both or neither), else the config file's,
    else the local CA's leaf (created on first use)."""
    if (cert is None) != (key is None):
        raise InputError("--sign-cert and --sign-key go together (a certificate chain and its private key)")
    if cert is not None:
        return _credentials(Path(cert), Path(key), "--sign-cert/--sign-key")
    config = read_config()
    if "cert" in config or "key" in config:
        if not ("cert" in config and "key" in config):
            raise InputError(f"{config_dir() / CONFIG_FILE}: give both cert and key")
        return _credentials(_config_path(config["cert"]), _config_path(config["key"]),
                            f"the certificate in {config_dir() / CONFIG_FILE}")
    return local_signer()


def local_signer() -> Credentials:
    """The local leaf certificate, issued by the local CA; both are made on first use."""
    folder = config_dir() / LOCAL_FOLDER
    if not (folder / "signer-chain.pem").is_file():
        _create_local_ca(folder)
    return _credentials(folder / "signer-chain.pem", folder / "signer-key.pem",
                        f"the local signing CA in {folder} (valid, but trusted only where {folder / 'ca.pem'} is)")


def _create_local_ca(folder: Path) -> None:
    """Make a CA and a leaf it signs into a hidden folder, then rename it into place (a second process
    that lost the race uses the winner's)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mimaface (local, untrusted)"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def usage(sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=not sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=sign, crl_sign=sign,
                             encipher_only=False, decipher_only=False)

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=365 * LOCAL_YEARS)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    user = os.environ.get("USER") or "user"
    ca = (x509.CertificateBuilder().subject_name(name(f"mimaface local CA of {user}")).issuer_name(
        name(f"mimaface local CA of {user}")).public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name(f"mimaface local signer of {user}")).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}")
    staging.mkdir(mode=0o700)
    try:
        (staging / "ca.pem").write_bytes(ca.public_bytes(pem))
        (staging / "signer-chain.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
        key_file = staging / "signer-key.pem"
        key_file.touch(mode=0o600)
        key_file.write_bytes(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "signer-chain.pem").is_file():
                raise
            return  # another process made it first
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"mimaface: created a local signing CA in {folder}; outputs signed with it are valid but not trusted by "
          f"anyone until they trust {folder / 'ca.pem'} (or sign with your own: --sign-cert/--sign-key)",
          file=sys.stderr)


def _credentials(cert: Path, key: Path, origin: str) -> Credentials:
    """Read and check a PEM chain and its key (they must belong together)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    for path in (cert, key):
        if not path.is_file():
            raise InputError(f"{path}: no such file (signing with {origin})")
    chain, key_pem = cert.read_bytes(), key.read_bytes()
    try:
        leaf = x509.load_pem_x509_certificates(chain)[0]
    except ValueError as err:
        raise InputError(f"{cert}: not a PEM certificate chain ({one_line(err)})") from err
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        raise InputError(f"{key}: not an unencrypted PEM private key ({one_line(err)})") from err
    if leaf.issuer == leaf.subject:
        raise InputError(f"{cert}: a self-signed certificate; C2PA needs one issued by a CA (the chain: signer first)")
    same = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*same) != leaf.public_key().public_bytes(*same):
        raise InputError(f"{key}: this key does not belong to the first certificate in {cert}")
    if isinstance(private, ec.EllipticCurvePrivateKey):
        algorithm = {256: "es256", 384: "es384", 521: "es512"}.get(private.curve.key_size)
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        algorithm = "ed25519"
    elif isinstance(private, rsa.RSAPrivateKey):
        algorithm = "ps256"
    else:
        algorithm = None
    if algorithm is None:
        raise InputError(f"{key}: C2PA signs with EC P-256/384/521, Ed25519 or RSA keys")
    return Credentials(chain, key_pem, algorithm, origin)


# ---------------------------------------------------------------------------------------- reading


def read_manifest(path: str | os.PathLike, trust: list[str | os.PathLike] = ()) -> ManifestCheck:
    """Read and validate a file's manifest; ``trust``: PEM files of CAs whose signers count as trusted."""
    import c2pa

    path = Path(path)
    mime = MIME_TYPES.get(path.suffix.lower())
    if mime is None:
        return ManifestCheck("absent", f"{path.suffix or 'this'} files carry no manifest")
    for anchor in trust:
        if not Path(anchor).is_file():
            raise InputError(f"{anchor}: no such file (a trust anchor: a CA certificate, PEM)")
    anchors = "".join(Path(p).read_text() for p in trust)
    settings = {"builder": {"thumbnail": {"enabled": False}}}
    if anchors:
        settings.update({"verify": {"verify_trust": True}, "trust": {"trust_anchors": anchors}})
    try:
        with open(path, "rb") as stream:
            reader = c2pa.Reader.try_create(mime, stream, None, c2pa.Context.from_dict(settings))
            if reader is None:
                return ManifestCheck("absent", "")
            state = reader.get_validation_state() or "Invalid"
            results = reader.get_validation_results() or {}
            manifest = reader.get_active_manifest() or {}
    except c2pa.C2paError as err:  # a manifest store that cannot even be parsed
        return ManifestCheck("invalid", one_line(err))
    failures = [item.get("code", "?") for item in results.get("activeManifest", {}).get("failure", [])
                if item.get("code") != UNTRUSTED]
    record = next((a.get("data") for a in manifest.get("assertions", []) if a.get("label") == ASSERTION), None)
    signer = manifest.get("signature_info", {}).get("common_name", "unknown signer")
    if state == "Invalid" or failures:
        return ManifestCheck("invalid", ", ".join(failures) or "validation failed", record)
    return ManifestCheck(state.lower(), signer if state == "Trusted" else f"{signer}, not trusted", record)


# ----------------------------------------------------------------------------------------- config


def config_dir() -> Path:
    """Where mimaface keeps its signing files."""
    if os.environ.get("MIMAFACE_CONFIG_DIR"):
        return Path(os.environ["MIMAFACE_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "mimaface"


def read_config() -> dict:
    path = config_dir() / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a TOML file ({one_line(err)})") from err
    unknown = set(config) - {"cert", "key", "trust"}
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (use cert, key, trust)")
    return config


def configured_trust() -> list[Path]:
    """The CAs the config file tells ``mimaface verify`` to trust."""
    trust = read_config().get("trust", [])
    return [_config_path(p) for p in ([trust] if isinstance(trust, str) else trust)]


def _config_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else config_dir() / path

