"""What a credential looks like is redacted wherever it stands in a log line; what an operator needs stays."""
import logging

import pytest

from taxi_fares_mlops.redaction import MASK, RedactingFilter, redact

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvcGVyYXRvciJ9.c2lnbmF0dXJlMTIz"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.mark.parametrize("text, secret", [
    (f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core", KEY),
    ("https://acct.blob.core.windows.net/c/b?sv=2024-08-04&sp=cw&sig=AbC%2Bdef%3D&se=x", "AbC%2Bdef%3D"),
    ("url=https%3A%2F%2Facct%2Fc%3Fsv%3D2024%26sig%3DAbCdEf123", "AbCdEf123"),
    (f"Authorization: Bearer {JWT}", JWT),
    (f"headers={{'Authorization': 'Bearer {JWT}'}}", JWT),
    (f"token {JWT} refused", JWT),
    ("DATABRICKS_TOKEN=dapi0123456789abcdef0123456789abcdef-2", "dapi0123456789abcdef0123456789abcdef"),
    ("token dose0123456789abcdef0123456789abcdef", "dose0123456789abcdef0123456789abcdef"),
    ("AZURE_CLIENT_SECRET=s3cr3t~Value.With-Chars", "s3cr3t~Value.With-Chars"),
    ("refresh_token=0.AAAbbbCCCdddEEE", "0.AAAbbbCCCdddEEE"),
    ("account_key: 'Zm9vYmFyYmF6cXV4'", "Zm9vYmFyYmF6cXV4"),
    ("x-api-key: k3y-Value-0123456789", "k3y-Value-0123456789"),
    ("InstrumentationKey=00000000-1111-2222-3333-444444444444;IngestionEndpoint=https://x",
     "00000000-1111-2222-3333-444444444444"),
    ("sc://user:hunter2pass@host:15002", "hunter2pass"),
    ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAAAA\n-----END PRIVATE KEY-----", "MC4CAQAwBQYDK2VwBCIEIAAAA"),
])
def test_a_secret_is_redacted_wherever_it_stands(text, secret):
    redacted = redact(text)
    assert secret not in redacted and MASK in redacted, redacted


@pytest.mark.parametrize("text", [
    "the workspace refused the token: 403",
    "secret scope taxi-fares has no key appinsights-connection-string",
    "published 1,000,000 rows in 2 part(s) to account 'devstoreaccount1', container 'predictions'",
    "model 'taxi_fares' version 2 was judged against version 1",
])
def test_what_an_operator_needs_stays(text):
    assert redact(text) == text


def test_the_filter_redacts_the_arguments_and_the_traceback():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "publishing with %s", (f"AccountKey={KEY}",), None)
    try:
        raise RuntimeError(f"failed with {JWT}")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert KEY not in text and JWT not in text and "publishing with AccountKey=***" in text
