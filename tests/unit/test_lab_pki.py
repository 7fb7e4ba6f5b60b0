"""The lab PKI the Kubernetes ``nats`` role keeps (harmony_fleet.localstack.tls.lab_pki_pems):
what exists is kept while it is good; a missing, foreign, renamed or expiring part is made
anew, and a new CA brings a new certificate."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from harmony_fleet.localstack.tls import LAB_PKI_FILES, TlsSetupError, lab_pki_pems

SANS = ["nats.fleet.svc", "*.nats-headless.fleet.svc", "127.0.0.1"]
DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def pki() -> dict[str, str]:
    made, reasons = lab_pki_pems({}, SANS)
    assert reasons == ["no usable lab CA"]
    return made


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_a_new_pki_names_exactly_the_sans_for_server_and_client_use(pki: dict[str, str]) -> None:
    assert sorted(pki) == sorted(LAB_PKI_FILES)
    cert, ca = _cert(pki["tls.crt"]), _cert(pki["ca.crt"])
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(str(n.value) for n in names) == sorted(SANS)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_a_good_pki_is_kept_as_it_is(pki: dict[str, str]) -> None:
    kept, reasons = lab_pki_pems(dict(pki), list(reversed(SANS)))
    assert (kept, reasons) == (pki, [])


@pytest.mark.parametrize(("change", "reason", "new_ca"), [
    ({"tls.crt": ""}, "no usable certificate", False),
    ({"tls.key": "not a key"}, "no usable certificate", False),
    ({"ca.key": None}, "no usable lab CA", True),
])
def test_a_missing_or_broken_part_is_made_anew(pki: dict[str, str], change: dict[str, str | None],
                                               reason: str, new_ca: bool) -> None:
    existing = {k: v for k, v in {**pki, **change}.items() if v is not None}
    made, reasons = lab_pki_pems(existing, SANS)
    assert reasons == [reason]
    assert (made["ca.crt"] != pki["ca.crt"]) is new_ca
    assert made["tls.crt"] != pki["tls.crt"]
    _cert(made["tls.crt"]).verify_directly_issued_by(_cert(made["ca.crt"]))


def test_a_certificate_of_another_ca_or_with_other_names_is_replaced(pki: dict[str, str]) -> None:
    other, _ = lab_pki_pems({}, SANS)
    made, reasons = lab_pki_pems({**pki, "tls.crt": other["tls.crt"], "tls.key": other["tls.key"]},
                                 SANS)
    assert reasons == ["the certificate is not signed by the lab CA"]
    assert made["ca.crt"] == pki["ca.crt"]
    made, reasons = lab_pki_pems(dict(pki), [*SANS, "nats.example.org"])
    assert reasons == ["the certificate's names changed"]
    assert made["ca.crt"] == pki["ca.crt"]


def test_expiring_parts_are_renewed_ahead_of_time(pki: dict[str, str]) -> None:
    now = datetime.datetime.now(datetime.UTC)
    _, reasons = lab_pki_pems(dict(pki), SANS, now=now + 61 * DAY)
    assert reasons == ["the certificate expires soon"]
    _, reasons = lab_pki_pems(dict(pki), SANS, now=now + 151 * DAY)
    assert reasons == ["the lab CA expires soon"]


@pytest.mark.parametrize("sans", [[], ["not a name!"], ["*.com"]])
def test_names_that_cannot_be_in_a_certificate_are_refused(sans: list[str]) -> None:
    with pytest.raises(TlsSetupError):
        lab_pki_pems({}, sans)
